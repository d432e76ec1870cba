package broker_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/bedrockqb/quotabroker/broker"
)

// fakeSource returns what the test sets, and counts calls.
type fakeSource struct {
	mu    sync.Mutex
	specs []broker.Spec
	err   error
	calls int
}

func (f *fakeSource) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

func (f *fakeSource) set(specs []broker.Spec, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.specs, f.err = specs, err
}

func (f *fakeSource) Discover(context.Context) (broker.Discovery, error) {
	f.mu.Lock()
	specs, err := f.specs, f.err
	f.calls++
	f.mu.Unlock()
	if err != nil {
		return broker.Discovery{}, err
	}
	return broker.Discovery{Specs: specs, Skipped: []broker.SkippedQuota{{Region: "us-east-1", Code: "L-1", Name: "x", Reason: "batch"}}}, nil
}

// TestRunRefreshPicksUpRaisesAndSurvivesOutages runs in a synctest bubble:
// time.Sleep advances the bubble's clock once every goroutine is blocked,
// so the refresh loop's timers fire exactly when they are due.
func TestRunRefreshPicksUpRaisesAndSurvivesOutages(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := bubbleBroker(t)
		src := &fakeSource{}
		src.set([]broker.Spec{spec(sonnet45, broker.Limits{TPM: 1000})}, nil)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error)
		go func() { done <- b.RunRefresh(ctx, src, 10*time.Minute) }()
		defer func() {
			cancel()
			<-done
		}()
		tpm := func() int64 {
			r, _ := b.Report(broker.ReportFilter{})
			return r[0].Spec.Quota.TPM
		}
		synctest.Wait() // the first refresh runs at once
		if got := tpm(); got != 1000 || src.count() != 1 {
			t.Fatalf("after the first refresh TPM %d, %d calls", got, src.count())
		}
		if st := b.DiscoveryStatus(); st.LastSuccess.IsZero() || st.LastError != "" || len(st.Skipped) != 1 || !st.Enabled {
			t.Fatalf("status %+v", st)
		}

		// A raise arrives with the next refresh, an interval later.
		src.set([]broker.Spec{spec(sonnet45, broker.Limits{TPM: 5000})}, nil)
		time.Sleep(10*time.Minute - time.Second)
		if got := tpm(); got != 1000 {
			t.Fatalf("refreshed early: TPM %d", got)
		}
		time.Sleep(time.Second)
		synctest.Wait()
		if got := tpm(); got != 5000 {
			t.Fatalf("raise not picked up: TPM %d", got)
		}

		// AWS fails: the budgets stay, the status says why, and retries come
		// sooner than the interval (5 s, then 10 s).
		src.set(nil, errors.New("AccessDeniedException"))
		time.Sleep(10 * time.Minute)
		synctest.Wait()
		if st := b.DiscoveryStatus(); st.LastError == "" || tpm() != 5000 {
			t.Fatalf("after a failure: status %+v, TPM %d", st, tpm())
		}
		calls := src.count()
		time.Sleep(5 * time.Second)
		synctest.Wait()
		time.Sleep(10 * time.Second)
		synctest.Wait()
		if got := src.count() - calls; got != 2 {
			t.Fatalf("%d retries in the 15 s after a failure, want 2 (backoff 5 s, 10 s)", got)
		}
		src.set([]broker.Spec{spec(sonnet45, broker.Limits{TPM: 7000})}, nil)
		time.Sleep(20 * time.Second)
		synctest.Wait()
		if st := b.DiscoveryStatus(); st.LastError != "" || tpm() != 7000 {
			t.Fatalf("after recovery: %+v, TPM %d", st, tpm())
		}
	})
}

func TestRefreshNowNeedsASource(t *testing.T) {
	e := newEnv(t)
	if err := e.b.RefreshNow(context.Background()); broker.KindOf(err) != broker.KindPrecondition {
		t.Fatalf("RefreshNow without a source: %v", err)
	}
}
