// Package etcdtest runs real etcd servers for tests: members of one
// cluster on loopback ports, each a child process of the etcd binary that
// .ci/tools.sh builds into .bin/etcd (or QUOTA_BROKER_ETCD_BIN). Without the
// binary a test is skipped with the command that builds it, except under
// CI=1, where it fails: CI must run the cluster tests.
package etcdtest

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bedrockqb/quotabroker/internal/freeport"
)

// Binary returns the etcd binary's path, skipping (or, in CI, failing) t
// when there is none.
func Binary(t testing.TB) string {
	t.Helper()
	p, err := Find()
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	return p
}

// Find returns QUOTA_BROKER_ETCD_BIN, or .bin/etcd in the module that
// holds the working directory, if it is there.
func Find() (string, error) {
	if p := os.Getenv("QUOTA_BROKER_ETCD_BIN"); p != "" {
		return p, nil
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("etcdtest: no go.mod above the working directory")
		}
		dir = parent
	}
	p := filepath.Join(dir, ".bin", "etcd")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("no etcd binary at %s: build it with `bash .ci/tools.sh` (or set QUOTA_BROKER_ETCD_BIN)", p)
	}
	return p, nil
}

// Member is one etcd server.
type Member struct {
	Name, ClientURL, PeerURL string
	bin, dir                 string
	initial                  string
	fast                     bool

	mu   sync.Mutex // guards cmd and done
	cmd  *exec.Cmd
	done chan struct{}
}

// Cluster is n members of one etcd cluster.
type Cluster struct {
	Members []*Member
}

// Start starts an n-member cluster and waits until every member answers
// its health check; t's cleanup kills them.
func Start(t testing.TB, n int) *Cluster {
	t.Helper()
	c, err := StartCluster(t.TempDir(), Binary(t), n, true)
	if c != nil {
		t.Cleanup(c.Close)
	}
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// StartCluster starts n members with their data under dir and waits until
// each is healthy. fast shortens etcd's timeouts (heartbeat 50 ms, election
// 500 ms) for tests; otherwise etcd's defaults apply (100 ms, 1 s). Close
// kills them; on an error, the members already started are returned with
// it, for the caller to Close.
func StartCluster(dir, bin string, n int, fast bool) (*Cluster, error) {
	c := &Cluster{}
	var initial []string
	for i := range n {
		m := &Member{Name: fmt.Sprintf("e%d", i), bin: bin, dir: filepath.Join(dir, fmt.Sprintf("e%d", i)), fast: fast}
		var err error
		if m.ClientURL, err = freeAddr(); err != nil {
			return c, err
		}
		if m.PeerURL, err = freeAddr(); err != nil {
			return c, err
		}
		m.ClientURL, m.PeerURL = "http://"+m.ClientURL, "http://"+m.PeerURL
		initial = append(initial, m.Name+"="+m.PeerURL)
		c.Members = append(c.Members, m)
	}
	for _, m := range c.Members {
		m.initial = strings.Join(initial, ",")
		if err := m.start(); err != nil {
			return c, err
		}
	}
	for _, m := range c.Members {
		if err := m.waitHealthy(30 * time.Second); err != nil {
			return c, err
		}
	}
	return c, nil
}

// Close kills every member.
func (c *Cluster) Close() {
	for _, m := range c.Members {
		m.Kill()
	}
}

// Endpoints are the members' client URLs, comma-separated.
func (c *Cluster) Endpoints() string {
	var eps []string
	for _, m := range c.Members {
		eps = append(eps, m.ClientURL)
	}
	return strings.Join(eps, ",")
}

// freeAddr returns a loopback address with a port free at the time, outside
// the kernel's ephemeral range (see internal/freeport).
func freeAddr() (string, error) { return freeport.Addr() }

// Start restarts a killed member on its data directory and waits until it
// is healthy; t's cleanup kills it.
func (m *Member) Start(t testing.TB) {
	t.Helper()
	if err := m.start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Kill)
}

func (m *Member) start() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	args := []string{"--name", m.Name, "--data-dir", m.dir,
		"--listen-client-urls", m.ClientURL, "--advertise-client-urls", m.ClientURL,
		"--listen-peer-urls", m.PeerURL, "--initial-advertise-peer-urls", m.PeerURL,
		"--initial-cluster", m.initial, "--initial-cluster-state", "new", "--initial-cluster-token", "etcdtest",
		"--log-level", "error"}
	if m.fast {
		args = append(args, "--heartbeat-interval", "50", "--election-timeout", "500")
	}
	cmd := exec.Command(m.bin, args...)
	if err := os.MkdirAll(filepath.Dir(m.dir), 0o700); err != nil {
		return err
	}
	log, err := os.Create(m.dir + ".log")
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		log.Close()
		return fmt.Errorf("start etcd %s: %w", m.Name, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); log.Close(); close(done) }() // ends when the member does: Kill waits for it
	m.cmd, m.done = cmd, done
	return nil
}

// Kill stops the member with SIGKILL and waits for it; a stopped member is
// left as it is.
func (m *Member) Kill() {
	m.mu.Lock()
	cmd, done := m.cmd, m.done
	m.cmd = nil
	m.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGKILL)
	<-done
}

// waitHealthy polls the member's /health until it says so, for at most d.
func (m *Member) waitHealthy(d time.Duration) error {
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(d)
	for {
		resp, err := client.Get(m.ClientURL + "/health")
		if err == nil {
			var b [64]byte
			n, _ := resp.Body.Read(b[:])
			resp.Body.Close()
			if strings.Contains(string(b[:n]), `"health":"true"`) {
				return nil
			}
		}
		if time.Now().After(deadline) {
			out, _ := os.ReadFile(m.dir + ".log")
			return fmt.Errorf("etcd member %s not healthy within %v: %v\n%s", m.Name, d, err, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
