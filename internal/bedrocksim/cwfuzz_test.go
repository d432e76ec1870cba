package bedrocksim

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// FuzzGetMetricDataExpression feeds arbitrary expressions to the math
// evaluator: it must answer a result or a ValidationError, never panic or
// loop, and every series it returns has finite values.
func FuzzGetMetricDataExpression(f *testing.F) {
	for _, e := range []string{"100 * thr / (inv + thr)", "SUM(METRICS())", "FILL(inv, 0)", "AVG([inv, thr])", "-inv",
		`SEARCH('{AWS/Bedrock,ModelId} MetricName="Invocations"', 'Sum', 60)`, "SUM(SEARCH('Invocations', 'Sum', 60))",
		"RATE(inv)", "e", "((", "[inv", "1e400 * inv", "METRICS('i')"} {
		f.Add(e)
	}
	clock := newFakeClock()
	sim, err := New(Config{Scenario: testScenario(), Now: clock.Now, DisableLatency: true})
	if err != nil {
		f.Fatal(err)
	}
	srv := httptest.NewServer(sim.Handler())
	f.Cleanup(srv.Close)
	h := newClients(sim, clock, srv.URL, "us-east-1")
	for range 3 {
		_, _ = h.rt.Converse(f.Context(), converseIn(llama31, prompt(10), 100))
	}
	stat := func(id, name string) map[string]any {
		return map[string]any{"Id": id, "ReturnData": false, "MetricStat": map[string]any{"Metric": map[string]any{
			"Namespace": "AWS/Bedrock", "MetricName": name}, "Period": 60, "Stat": "Sum"}}
	}
	f.Fuzz(func(t *testing.T, expr string) {
		now := sim.Now()
		out, cerr := sim.cloudWatchOp("us-east-1", "GetMetricData", map[string]any{
			"StartTime": now.Add(-time.Hour), "EndTime": now.Add(time.Minute),
			"MetricDataQueries": []any{stat("inv", "Invocations"), stat("thr", "InvocationThrottles"),
				map[string]any{"Id": "e", "Expression": expr}},
		})
		if cerr != nil {
			if cerr.code != "ValidationError" && cerr.code != "InvalidParameterValue" {
				t.Fatalf("%q: %v", expr, cerr)
			}
			return
		}
		for _, r := range out["MetricDataResults"].([]any) {
			for _, v := range r.(map[string]any)["Values"].([]any) {
				if x := v.(float64); x != x {
					t.Fatalf("%q: NaN in %v", expr, r)
				}
			}
		}
	})
}

// FuzzCloudWatchQueryForm posts arbitrary form bodies over the query
// protocol: every answer is XML with a 200, 4xx or 5xx, never a panic.
func FuzzCloudWatchQueryForm(f *testing.F) {
	f.Add("Action=ListMetrics&Version=2010-08-01&Dimensions.member.1.Name=ModelId")
	f.Add("Action=GetMetricData&Version=2010-08-01&MetricDataQueries.member.1.Id=a&MetricDataQueries.member.1.Expression=1&StartTime=2026-01-01T00:00:00Z&EndTime=2027-01-01T00:00:00Z")
	f.Add("Action=PutMetricAlarm&Version=2010-08-01&AlarmName=a&EvaluationPeriods=1&ComparisonOperator=LessThanThreshold&MetricName=m&Namespace=n&Period=60&Threshold=1&Statistic=Sum")
	f.Add("Action=PutMetricAlarm&Version=2010-08-01&AlarmName=m&EvaluationPeriods=1&ComparisonOperator=GreaterThanThreshold&Threshold=1" +
		"&Metrics.member.1.Id=a&Metrics.member.1.ReturnData=false&Metrics.member.1.MetricStat.Period=60&Metrics.member.1.MetricStat.Stat=Sum" +
		"&Metrics.member.1.MetricStat.Metric.Namespace=AWS/Bedrock&Metrics.member.1.MetricStat.Metric.MetricName=InvocationThrottles" +
		"&Metrics.member.2.Id=e&Metrics.member.2.Expression=SUM([a,a])&Metrics.member.2.ReturnData=true")
	f.Add("Action=DescribeAlarms&Version=2010-08-01&AlarmNames.member.x=1&MaxRecords=0")
	f.Add("Action=DescribeAlarms&Version=2010-08-01&AlarmNames.member=1&AlarmNames.member.1.member.2=3")
	sim, err := New(Config{Scenario: testScenario(), Now: newFakeClock().Now, DisableLatency: true})
	if err != nil {
		f.Fatal(err)
	}
	h := sim.Handler()
	f.Fuzz(func(t *testing.T, form string) {
		r := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(form))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if !strings.HasPrefix(w.Body.String(), "<") || w.Code < 200 {
			t.Fatalf("%q: %d %q", form, w.Code, w.Body.String())
		}
	})
}

// FuzzCheckInvokeBody: the schema check never panics and accepts nothing
// that is not a JSON object.
func FuzzCheckInvokeBody(f *testing.F) {
	f.Add("anthropic.claude-3-haiku-20240307-v1:0", `{"anthropic_version":"bedrock-2023-05-31","max_tokens":5,"messages":[]}`)
	f.Add("amazon.nova-lite-v1:0", `{"inputText":"x"}`)
	f.Add("meta.llama3-1-8b-instruct-v1:0", `{"prompt":1}`)
	f.Fuzz(func(t *testing.T, model, body string) {
		msg := checkInvokeBody(model, []byte(body))
		if msg == "" && !strings.HasPrefix(strings.TrimSpace(body), "{") {
			t.Fatalf("accepted %q for %s", body, model)
		}
		if msg != "" && !strings.HasPrefix(msg, "Malformed input request: ") {
			t.Fatalf("message %q", msg)
		}
	})
}
