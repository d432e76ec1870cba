package dashboard

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/bedrockqb/quotabroker/broker"
)

// fakeSource serves fixed history: n budgets, the first busy of them with
// traffic in every minute of the day.
type fakeSource struct {
	now     time.Time
	reports []broker.BudgetReport
	busy    int
}

func newFakeSource(n, busy int) *fakeSource {
	f := &fakeSource{now: t0.Add(24 * time.Hour), busy: busy}
	for i := range n {
		k := key(fmt.Sprintf("model-%03d", i))
		f.reports = append(f.reports, broker.BudgetReport{BudgetInfo: broker.BudgetInfo{
			Spec: broker.Spec{Key: k, Quota: broker.Limits{TPM: 100_000, RPM: 100}}, Margin: 0.9,
			Static: broker.Limits{TPM: 90_000, RPM: 90}, Effective: broker.Limits{TPM: 90_000, RPM: 90}}})
	}
	return f
}

func (f *fakeSource) Report(broker.ReportFilter) ([]broker.BudgetReport, time.Time) {
	return f.reports, f.now
}

func (f *fakeSource) History(_ context.Context, q broker.HistoryQuery) ([]broker.Series, error) {
	var out []broker.Series
	for i := range f.busy {
		s := emptySeries(f.reports[i].Spec.Key, q)
		for j := range s.Points {
			p := &s.Points[j]
			m := int64(q.Step / time.Minute)
			p.Granted, p.Completed, p.Throttled, p.Refused = m*int64(10+j%7), m*int64(10+j%7), m*int64(j%3), m*int64(j%2)
			p.WindowTokens, p.LimitTPM = m*int64(20_000+1000*(j%11)), 90_000
			s.Total.Add(p)
		}
		out = append(out, s)
	}
	return out, nil
}

// BenchmarkPage measures the page of 150 budgets with 60 busy (50
// charted over the hour and the day), against the same request for the
// hour alone and against reading and ranking the history without drawing.
func BenchmarkPage(b *testing.B) {
	src := newFakeSource(150, 60)
	d := New(src, Config{})
	mux := http.NewServeMux()
	d.Register(mux)
	for _, c := range []struct{ name, url string }{
		{"page-hour+day", "/dashboard"},
		{"page-hour", "/dashboard?span=hour"},
		{"chart.svg-hour", "/dashboard/chart.svg"},
	} {
		b.Run(c.name, func(b *testing.B) {
			var size int
			for b.Loop() {
				rec := httptest.NewRecorder()
				req := httptest.NewRequest(http.MethodGet, c.url, nil)
				req.Header.Set("Accept-Encoding", "gzip")
				mux.ServeHTTP(rec, req)
				if rec.Code != http.StatusOK {
					b.Fatalf("%s: %d %s", c.url, rec.Code, rec.Body)
				}
				size = rec.Body.Len()
			}
			b.ReportMetric(float64(size), "gzip-bytes")
		})
	}
	b.Run("collect-only", func(b *testing.B) {
		for b.Loop() {
			if _, err := collect(context.Background(), src, nil, broker.ReportFilter{}, Spans, 50); err != nil {
				b.Fatal(err)
			}
		}
	})
}
