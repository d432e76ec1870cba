package main

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/broker/bolt"
	"github.com/bedrockqb/quotabroker/internal/bedrocksim"
	"github.com/bedrockqb/quotabroker/internal/clocktest"
	"github.com/bedrockqb/quotabroker/internal/probe"
	"github.com/bedrockqb/quotabroker/server"
)

const probeModel = "us.amazon.nova-micro-v1:0"

// The hidden capacity of testdata/probe-scenario.json: 1,440 TPM, 60 calls
// of 24 tokens a minute. The published quota is four times that.
const (
	hiddenTPM       = 1440
	hiddenRPM       = 60
	publishedTPM    = 5760
	publishedRPMRow = 20000
)

// probeWorld is the simulator and an in-process broker (bbolt file, gRPC on
// 127.0.0.1) whose budget is what discovery would find: the published quota.
type probeWorld struct {
	sim     *bedrocksim.Sim
	simURL  string
	broker  string
	clock   clocktest.Scaled
	brokerB *broker.Broker
}

func startProbeWorld(t *testing.T, speed float64) *probeWorld {
	t.Helper()
	sc, err := bedrocksim.LoadScenario(filepath.Join("testdata", "probe-scenario.json"))
	if err != nil {
		t.Fatal(err)
	}
	sim, err := bedrocksim.New(bedrocksim.Config{Scenario: sc, Speed: speed, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(sim.Handler())
	t.Cleanup(hs.Close)

	clock := clocktest.NewScaled(speed)
	store, err := bolt.Open(filepath.Join(t.TempDir(), "state.db"), bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	b, err := broker.Open(ctx, store, clock, broker.Config{})
	if err != nil {
		t.Fatal(err)
	}
	key, err := broker.ParseModelID(probeModel, "us-east-1", "us-east-1")
	if err != nil {
		t.Fatal(err)
	}
	if err := b.SetSpecs(ctx, []broker.Spec{{Key: key, Quota: broker.Limits{TPM: publishedTPM, RPM: publishedRPMRow},
		Source: "test: the published quota"}}); err != nil {
		t.Fatal(err)
	}
	srv := server.New(b, server.Config{})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { b.Run(ctx) })
	wg.Go(func() { srv.Serve(lis) })
	t.Cleanup(func() {
		srv.GRPC().Stop()
		cancel()
		wg.Wait()
		b.Close()
		store.Close()
	})
	return &probeWorld{sim: sim, simURL: hs.URL, broker: lis.Addr().String(), clock: clock, brokerB: b}
}

func (w *probeWorld) stats(t *testing.T) bedrocksim.Stats {
	t.Helper()
	resp, err := http.Get(w.simURL + "/_sim/stats")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st bedrocksim.Stats
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st
}

func (w *probeWorld) args(extra ...string) []string {
	return append([]string{"--addr", w.broker, "--bedrock-endpoint", w.simURL, "--region", "us-east-1", "--model", probeModel}, extra...)
}

func TestProbeWithoutConfirmPrintsThePlanAndSendsNothing(t *testing.T) {
	t.Parallel()
	w := startProbeWorld(t, 1)
	var stdout, stderr bytes.Buffer
	err := runProbe(context.Background(), w.args("--start-rpm", "30", "--step", "1.5x", "--max-steps", "4"), &stdout, &stderr, w.clock)
	if err == nil || !strings.Contains(err.Error(), "--confirm") {
		t.Fatalf("want an error that names --confirm, got %v", err)
	}
	out := stdout.String()
	// 30, 45, 67.5, 101.25 RPM for a minute each; 24 tokens a call (8
	// input + 16 max_tokens x burndown 1).
	for _, want := range []string{"us-east-1/cross-region/amazon.nova-micro-v1:0", "5184 TPM", "101.2", "at most 244 calls", "at most 5856 tokens charged"} {
		if !strings.Contains(out, want) {
			t.Errorf("plan lacks %q:\n%s", want, out)
		}
	}
	if st := w.stats(t); st.Requests != 0 {
		t.Fatalf("the simulator saw %d Bedrock requests without --confirm", st.Requests)
	}
}

// TestProbeFindsHiddenCapacity runs the probe for real (real SDK, real
// quotaclient middleware, a real broker over gRPC) against a simulated
// account whose real capacity is a quarter of its published quota, at 10x
// time compression (a one-minute step takes six seconds). At 20x a stall of
// the loaded test machine became seconds of simulated time, after which the
// probe's calls bunched into bursts the bucket throttled below its real
// rate, and the estimate fell 30% short.
func TestProbeFindsHiddenCapacity(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the probe for about 40 s")
	}
	t.Parallel()
	w := startProbeWorld(t, 10)
	out := filepath.Join(t.TempDir(), "probe.json")
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err := runProbe(ctx, w.args("--start-rpm", "30", "--step", "1.5x", "--step-duration", "1m", "--max-steps", "7",
		"--max-tokens", "16", "--confirm", "--output", out), &stdout, &stderr, w.clock)
	t.Logf("stderr:\n%s", stderr.String())
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var res probe.Result
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatalf("result is not JSON: %v\n%s", err, b)
	}
	if len(res.Steps) < 2 {
		t.Fatalf("want several steps, got %d:\n%s", len(res.Steps), b)
	}
	if n := strings.Count(stderr.String(), "\nstep "); n != len(res.Steps) {
		t.Errorf("%d progress lines for %d steps", n, len(res.Steps))
	}
	if res.Stop.Reason != probe.StopThrottled {
		t.Fatalf("stopped for %q (%s), want %q:\n%s", res.Stop.Reason, res.Stop.Detail, probe.StopThrottled, b)
	}
	last := res.Steps[len(res.Steps)-1]
	if last.ThrottleRate <= res.Threshold {
		t.Fatalf("stopping step's throttle rate %v is within the threshold %v", last.ThrottleRate, res.Threshold)
	}
	for _, s := range res.Steps[:len(res.Steps)-1] {
		if s.ThrottleRate > res.Threshold {
			t.Fatalf("step %d was over the threshold (%v) and the probe went on", s.Step, s.ThrottleRate)
		}
	}
	// The hidden capacity was never published: the estimate comes from
	// throttles alone.
	e := res.Estimate
	if e == nil {
		t.Fatalf("no estimate:\n%s", b)
	}
	const tolerance = 0.2
	if rel := math.Abs(e.TokensPerMinute-hiddenTPM) / hiddenTPM; rel > tolerance {
		t.Errorf("estimated %.0f TPM, hidden capacity %d: off by %.0f%% (tolerance %.0f%%)", e.TokensPerMinute, hiddenTPM, 100*rel, 100*tolerance)
	}
	if rel := math.Abs(e.RequestsPerMinute-hiddenRPM) / hiddenRPM; rel > tolerance {
		t.Errorf("estimated %.1f RPM, hidden capacity %d: off by %.0f%% (tolerance %.0f%%)", e.RequestsPerMinute, hiddenRPM, 100*rel, 100*tolerance)
	}
	// What the probe counted is what the simulator saw.
	st := w.stats(t)
	var throttles, ok int64
	for _, s := range res.Steps {
		throttles += s.Throttles
		ok += s.OK
	}
	if st.Throttles != throttles || st.Admitted != ok {
		t.Errorf("simulator admitted %d and throttled %d; the probe counted %d ok and %d throttles", st.Admitted, st.Throttles, ok, throttles)
	}
	// The middleware reported the throttles: the broker's ceiling engaged.
	if res.BrokerCeiling == nil {
		t.Errorf("the broker's adaptive ceiling did not engage:\n%s", b)
	}
	t.Logf("estimate %.1f RPM %.0f TPM (%s); broker ceiling %+v", e.RequestsPerMinute, e.TokensPerMinute, e.Basis, res.BrokerCeiling)
}
