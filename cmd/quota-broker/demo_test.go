package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/broker/awsquota"
	"github.com/bedrockqb/quotabroker/broker/bolt"
	"github.com/bedrockqb/quotabroker/internal/bedrocksim"
	"github.com/bedrockqb/quotabroker/internal/clocktest"
	"github.com/bedrockqb/quotabroker/server"
)

func TestDemoBursts(t *testing.T) {
	t.Parallel()
	b := demoBursts{start: 45 * time.Second, on: 2 * time.Minute, period: 8 * time.Minute}
	for _, c := range []struct {
		at   time.Duration
		want bool
	}{
		{0, false}, {44 * time.Second, false}, {45 * time.Second, true}, {2*time.Minute + 44*time.Second, true},
		{2*time.Minute + 45*time.Second, false}, {8*time.Minute + 44*time.Second, false}, {8*time.Minute + 45*time.Second, true},
	} {
		if got := b.active(c.at); got != c.want {
			t.Errorf("active(%v) = %v, want %v", c.at, got, c.want)
		}
	}
	if !(demoBursts{}).active(0) {
		t.Error("a service without bursts does not send")
	}
}

// TestDemoStory runs the demo's pieces (the simulator on its default
// scenario, a broker that discovers its budgets from it, the demo's
// traffic) 5 times faster than real time, and checks the story the README
// tells: Bedrock throttles the model whose real capacity is below its quota
// within the first two minutes and its ceiling engages; the
// service that bypasses the broker gets Sonnet 4.5 throttled for the
// broker's clients too, its ceiling engages during the burst and climbs
// back after it, and CloudWatch counts requests the broker never granted.
func TestDemoStory(t *testing.T) {
	t.Parallel()
	const speed = 5
	ctx := context.Background()
	sim, err := bedrocksim.New(bedrocksim.Config{Speed: speed, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	simStart := sim.Now().Truncate(time.Minute)
	hs := httptest.NewServer(sim.Handler())
	t.Cleanup(hs.Close)

	// The broker as the demo runs it (serve's defaults), on a clock at the
	// simulator's speed.
	clock := clocktest.NewScaled(speed)
	store, err := bolt.Open(filepath.Join(t.TempDir(), "demo.db"), bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	b, err := broker.Open(ctx, store, clock, broker.Config{DefaultRegion: "us-east-1", Margin: 0.9,
		MaxWait: 5 * time.Minute, LeaseTTL: 5 * time.Minute, MaxLeaseTTL: time.Hour, HistoryRetention: 14 * 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	src, err := awsquota.New(awsquota.Config{Regions: []string{"us-east-1"}, Endpoint: hs.URL})
	if err != nil {
		t.Fatal(err)
	}
	b.UseSource(src)
	if err := b.Refresh(ctx, src); err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := server.New(b, server.Config{})
	runCtx, stopRun := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { b.Run(runCtx) })
	wg.Go(func() { srv.Serve(lis) })
	trafficCtx, stopTraffic := context.WithCancel(ctx)
	trafficDone := make(chan error, 1)
	go func() {
		trafficDone <- runDemoTraffic(trafficCtx, lis.Addr().String(), hs.URL, "us-east-1", speed, slog.New(slog.NewTextHandler(io.Discard, nil)))
	}()
	t.Cleanup(func() {
		stopTraffic()
		if err := <-trafficDone; err != nil {
			t.Errorf("demo traffic: %v", err)
		}
		srv.GRPC().Stop()
		stopRun()
		wg.Wait()
	})

	key := func(model string) broker.Key {
		return broker.Key{Region: "us-east-1", Scope: broker.ScopeCrossRegion, Model: model}
	}
	sonnet4, sonnet45 := key("anthropic.claude-sonnet-4-20250514-v1:0"), key("anthropic.claude-sonnet-4-5-20250929-v1:0")
	bypass := demoServices[len(demoServices)-1]
	if !bypass.bypass || bypass.model != "us."+sonnet45.Model {
		t.Fatalf("the last demo service is not Sonnet 4.5's bypass: %+v", bypass)
	}
	burstEnd := bypass.bursts.start + bypass.bursts.on

	simQuotas := func() string {
		var lines []string
		for _, code := range []string{"L-3423216A", "L-CCB5CBE9", "L-428D9248", "L-59759B4A"} {
			q, _ := sim.Quota("us-east-1", code)
			lines = append(lines, fmt.Sprintf("%s %s: true capacity %.0f, %d requests, %d admitted, %d throttled", code, q.Name, q.TrueCapacity, q.Requests, q.Admitted, q.Throttles))
		}
		return strings.Join(lines, "\n")
	}

	// Watch the ceilings once a simulated second until 90 s after the
	// burst. The story's events are at fixed simulated times; a ceiling's
	// recovery is computed when it is read, so it can only be seen by
	// looking.
	start := clock.Now()
	var (
		timeline                                   []string
		sonnet4Engaged, sonnet45Engaged, lastCut45 time.Duration = -1, -1, -1
		sonnet4Ceiling, lowest45, final45          int64
		sonnet4Explained                           bool // takes three throttles: minutes, not checked
		lastDecrease45                             time.Time
	)
	note := func(at time.Duration, format string, args ...any) {
		timeline = append(timeline, at.Round(time.Second).String()+" "+fmt.Sprintf(format, args...))
	}
	tick := time.NewTicker(time.Second / speed)
	defer tick.Stop()
	for at := time.Duration(0); at < burstEnd+90*time.Second; {
		<-tick.C
		at = clock.Now().Sub(start)
		for _, info := range b.Budgets() {
			a := info.Adaptive
			engaged := a.Ceiling != (broker.Limits{})
			switch key := info.Spec.Key; {
			case key == sonnet4 && engaged:
				if sonnet4Engaged < 0 {
					sonnet4Engaged, sonnet4Ceiling = at, a.Ceiling.TPM
					note(at, "Sonnet 4 ceiling engaged at %d TPM: %s", a.Ceiling.TPM, a.Reason)
				}
				if !sonnet4Explained && strings.Contains(a.Reason, "the real capacity looks lower than the published quota") {
					sonnet4Explained = true
					note(at, "Sonnet 4 ceiling %d TPM: %s", a.Ceiling.TPM, a.Reason)
				}
			case key == sonnet45:
				final45 = a.Ceiling.TPM // 0: not engaged
				if a.LastDecrease == lastDecrease45 {
					break
				}
				lastDecrease45, lastCut45, lowest45 = a.LastDecrease, at, a.Ceiling.TPM
				if sonnet45Engaged < 0 {
					sonnet45Engaged = at
				}
				note(at, "Sonnet 4.5 throttled: ceiling %d TPM", a.Ceiling.TPM)
			}
		}
	}
	note(burstEnd+90*time.Second, "Sonnet 4.5 ceiling %d TPM (0: recovered entirely)", final45)
	t.Logf("story (simulated time):\n%s", strings.Join(timeline, "\n"))
	t.Logf("simulator:\n%s", simQuotas())

	if sonnet4Engaged < 0 || sonnet4Engaged > 2*time.Minute {
		t.Errorf("Sonnet 4's ceiling engaged at %v (-1: never), not within two minutes", sonnet4Engaged)
	}
	if sonnet4Ceiling >= 180_000 {
		t.Errorf("Sonnet 4's ceiling %d TPM is not below quota x margin", sonnet4Ceiling)
	}
	// Chat-frontend alone fits Sonnet 4.5 with room to spare: its throttles
	// come from the burst and the emptied bucket just after it (the
	// bypass's last retries), and stop soon after; then the ceiling climbs
	// back.
	switch {
	case sonnet45Engaged < bypass.bursts.start || sonnet45Engaged > burstEnd+30*time.Second:
		t.Errorf("Sonnet 4.5's ceiling engaged at %v (-1: never), not during the bypass's burst (%v to %v) or just after", sonnet45Engaged, bypass.bursts.start, burstEnd)
	case lastCut45 > burstEnd+45*time.Second:
		t.Errorf("Sonnet 4.5's ceiling was still cut at %v, long after the burst ended at %v", lastCut45, burstEnd)
	case final45 != 0 && final45 <= lowest45:
		t.Errorf("Sonnet 4.5's ceiling is not recovering: %d TPM 90 s after the burst, %d TPM after the last cut", final45, lowest45)
	}
	if t.Failed() {
		t.FailNow()
	}

	// Bedrock throttled both, and CloudWatch counted Sonnet 4.5 calls the
	// broker never granted.
	for _, code := range []string{"L-59759B4A", "L-CCB5CBE9"} {
		if q, _ := sim.Quota("us-east-1", code); q.Throttles == 0 {
			t.Errorf("the simulator throttled nothing on %s (%s)", code, q.Name)
		}
	}
	var granted, reportedThrottles int64
	reps, _ := b.Report(broker.ReportFilter{Model: sonnet45.Model})
	for _, r := range reps {
		if r.Spec.Key == sonnet45 {
			granted, reportedThrottles = r.Counters.Granted, r.Counters.Throttled+r.Counters.ReportedThrottles
		}
	}
	if reportedThrottles == 0 {
		t.Errorf("no Sonnet 4.5 throttles reached the broker")
	}
	// Every call through the broker has a lease of its own (a retry
	// acquires a new one), so requests beyond the leases bypassed it.
	steps := int(sim.Now().Sub(simStart)/time.Minute) + 2
	u, err := newCloudWatch(hs.URL, slog.New(slog.NewTextHandler(io.Discard, nil))).Usage(ctx, sonnet45, simStart, time.Minute, steps)
	if err != nil {
		t.Fatal(err)
	}
	var invocations, throttles int64
	for _, p := range u.Points {
		invocations, throttles = invocations+p.Invocations, throttles+p.Throttles
	}
	t.Logf("Sonnet 4.5: CloudWatch counted %d invocations and %d throttles; the broker granted %d leases and heard of %d throttles", invocations, throttles, granted, reportedThrottles)
	if invocations+throttles < granted+50 {
		t.Errorf("CloudWatch counted %d Sonnet 4.5 requests, the broker granted %d leases: the bypass does not show", invocations+throttles, granted)
	}
}
