package server

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
)

// ClusterStatus is a replica's view of its cluster (cmd runs the cluster;
// the server only shows it): in GetQuotaReport and in /metrics.
type ClusterStatus struct {
	Leading       bool
	Self, Leader  string
	LeaderSince   time.Time // when this replica last saw the leadership move
	EtcdReachable bool
	EtcdError     string
	// Copy is a standby's copy of the state in etcd; nil on the leader.
	Copy *StandbyCopy
}

// StandbyCopy is how far a standby's copy of the state in etcd is: whole
// and kept up (Following) or why not, the etcd revision it reflects and
// the latest etcd has told it of, and how often it was read again.
type StandbyCopy struct {
	Following              bool
	Error                  string
	Revision, EtcdRevision int64
	Resyncs                int64
}

// Lag is how many revisions the copy is behind what etcd has told it of;
// -1 when there is no copy.
func (c *StandbyCopy) Lag() int64 {
	if !c.Following {
		return -1
	}
	return max(c.EtcdRevision-c.Revision, 0)
}

// StandbyCopyToPB is c on the wire (nil: unset).
func StandbyCopyToPB(c *StandbyCopy) *pb.StandbyCopy {
	if c == nil {
		return nil
	}
	return &pb.StandbyCopy{Following: c.Following, Error: c.Error, Revision: c.Revision, EtcdRevision: c.EtcdRevision, Resyncs: c.Resyncs}
}

// ClusterFunc reports the cluster's state now.
type ClusterFunc func() ClusterStatus

func clusterToPB(s ClusterStatus) *pb.Cluster {
	role := "standby"
	if s.Leading {
		role = "leader"
	}
	return &pb.Cluster{Role: role, Self: s.Self, Leader: s.Leader, LeaderSince: timestampPB(s.LeaderSince),
		EtcdReachable: s.EtcdReachable, EtcdError: s.EtcdError, StandbyCopy: StandbyCopyToPB(s.Copy)}
}

// clusterCollector exports the cluster's state at scrape time.
type clusterCollector struct {
	fn                      ClusterFunc
	leader, etcdUp, movedAt *prometheus.Desc
	copyLag                 *prometheus.Desc
}

// RegisterCluster adds the cluster's metrics to reg:
// quotabroker_cluster_leader (1 on the leader, 0 on a standby, labelled
// with this replica's and the leader's address),
// quotabroker_cluster_etcd_up,
// quotabroker_cluster_leader_change_timestamp_seconds and, on a standby,
// quotabroker_cluster_standby_lag_revisions.
func RegisterCluster(reg prometheus.Registerer, fn ClusterFunc) {
	reg.MustRegister(&clusterCollector{fn: fn,
		leader: prometheus.NewDesc("quotabroker_cluster_leader", "1 when this replica leads the cluster and serves leases, 0 on a standby.", []string{"self", "leader"}, nil),
		etcdUp: prometheus.NewDesc("quotabroker_cluster_etcd_up", "1 while this replica's etcd session is alive.", nil, nil),
		movedAt: prometheus.NewDesc("quotabroker_cluster_leader_change_timestamp_seconds",
			"When this replica last saw the leadership move (unix seconds; 0: never).", nil, nil),
		copyLag: prometheus.NewDesc("quotabroker_cluster_standby_lag_revisions",
			"On a standby: how many etcd revisions its copy of the state is behind the latest it has seen (0: in sync; -1: no copy, it would read everything on taking over).", nil, nil),
	})
}

func (c *clusterCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.leader
	ch <- c.etcdUp
	ch <- c.movedAt
	ch <- c.copyLag
}

func (c *clusterCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.fn()
	b := func(v bool) float64 {
		if v {
			return 1
		}
		return 0
	}
	ch <- prometheus.MustNewConstMetric(c.leader, prometheus.GaugeValue, b(s.Leading), s.Self, s.Leader)
	ch <- prometheus.MustNewConstMetric(c.etcdUp, prometheus.GaugeValue, b(s.EtcdReachable))
	var at float64
	if !s.LeaderSince.IsZero() {
		at = float64(s.LeaderSince.UnixNano()) / 1e9
	}
	ch <- prometheus.MustNewConstMetric(c.movedAt, prometheus.GaugeValue, at)
	if s.Copy != nil {
		ch <- prometheus.MustNewConstMetric(c.copyLag, prometheus.GaugeValue, float64(s.Copy.Lag()))
	}
}
