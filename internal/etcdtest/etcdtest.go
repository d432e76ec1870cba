// Package etcdtest runs real etcd servers for tests: members of one
// cluster on loopback ports, each a child process of the etcd binary that
// .ci/tools.sh builds into .bin/etcd (or QUOTA_BROKER_ETCD_BIN). Without the
// binary a test is skipped with the command that builds it, except under
// CI=1, where it fails: CI must run the cluster tests.
package etcdtest

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Binary returns the etcd binary's path, skipping (or, in CI, failing) t
// when there is none.
func Binary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("QUOTA_BROKER_ETCD_BIN"); p != "" {
		return p
	}
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("etcdtest: no go.mod above the test's directory")
		}
		dir = parent
	}
	p := filepath.Join(dir, ".bin", "etcd")
	if _, err := os.Stat(p); err != nil {
		msg := fmt.Sprintf("no etcd binary at %s: build it with `bash .ci/tools.sh` (or set QUOTA_BROKER_ETCD_BIN)", p)
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return p
}

// Member is one etcd server.
type Member struct {
	Name, ClientURL, PeerURL string
	bin, dir                 string
	initial                  string

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
	bin := Binary(t)
	dir := t.TempDir()
	c := &Cluster{}
	var initial []string
	for i := range n {
		m := &Member{Name: fmt.Sprintf("e%d", i), ClientURL: "http://" + freeAddr(t), PeerURL: "http://" + freeAddr(t),
			bin: bin, dir: filepath.Join(dir, fmt.Sprintf("e%d", i))}
		initial = append(initial, m.Name+"="+m.PeerURL)
		c.Members = append(c.Members, m)
	}
	for _, m := range c.Members {
		m.initial = strings.Join(initial, ",")
		m.Start(t)
	}
	for _, m := range c.Members {
		m.WaitHealthy(t, 30*time.Second)
	}
	return c
}

// Endpoints are the members' client URLs, comma-separated.
func (c *Cluster) Endpoints() string {
	var eps []string
	for _, m := range c.Members {
		eps = append(eps, m.ClientURL)
	}
	return strings.Join(eps, ",")
}

// freeAddr returns a loopback address with a port free at the time.
func freeAddr(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// Start (re)starts the member on its data directory. Short timeouts keep
// the tests fast: heartbeat 50 ms, election 500 ms.
func (m *Member) Start(t testing.TB) {
	t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	cmd := exec.Command(m.bin, "--name", m.Name, "--data-dir", m.dir,
		"--listen-client-urls", m.ClientURL, "--advertise-client-urls", m.ClientURL,
		"--listen-peer-urls", m.PeerURL, "--initial-advertise-peer-urls", m.PeerURL,
		"--initial-cluster", m.initial, "--initial-cluster-state", "new", "--initial-cluster-token", "etcdtest",
		"--heartbeat-interval", "50", "--election-timeout", "500", "--log-level", "error")
	log, err := os.Create(m.dir + ".log")
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); log.Close(); close(done) }()
	m.cmd, m.done = cmd, done
	t.Cleanup(func() { m.Kill() })
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

// WaitHealthy polls the member's /health until it says so, for at most d.
func (m *Member) WaitHealthy(t testing.TB, d time.Duration) {
	t.Helper()
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(d)
	for {
		resp, err := client.Get(m.ClientURL + "/health")
		if err == nil {
			var b [64]byte
			n, _ := resp.Body.Read(b[:])
			resp.Body.Close()
			if strings.Contains(string(b[:n]), `"health":"true"`) {
				return
			}
		}
		if time.Now().After(deadline) {
			out, _ := os.ReadFile(m.dir + ".log")
			t.Fatalf("etcd member %s not healthy within %v: %v\n%s", m.Name, d, err, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
