package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/bedrockruntime"
	rttypes "github.com/aws/aws-sdk-go-v2/service/bedrockruntime/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/bedrockqb/quotabroker/clients/quotaclient"
	"github.com/bedrockqb/quotabroker/internal/alert"
	"github.com/bedrockqb/quotabroker/internal/bedrocksim"
)

// TestThrottleAlertReachesWebhook runs serve against the simulator with a
// webhook receiver: Bedrock's hidden capacity for Sonnet 4.5 is far below
// its published quota, so leased calls through the Go client's SDK
// middleware are throttled although the broker granted them; the
// throttle_rate alert fires at the webhook (and on /metrics), and resolves
// once the throttled traffic has left the window.
func TestThrottleAlertReachesWebhook(t *testing.T) {
	sim, err := bedrocksim.New(bedrocksim.Config{DisableLatency: true})
	if err != nil {
		t.Fatal(err)
	}
	// Room for about 20 calls of ~500 tokens (100 output tokens x burndown
	// 5, forced by the prompt), refilled at 167 tokens/s;
	// the broker believes in the published 500,000 TPM.
	hidden := 10_000.0
	if err := sim.SetCapacity("us-east-1", "L-CCB5CBE9", bedrocksim.CapacityChange{SetTrue: &hidden}); err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(sim.Handler())
	defer hs.Close()

	hooks := make(chan alert.Event, 100)
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var e alert.Event
		if err := json.NewDecoder(r.Body).Decode(&e); err != nil || r.Header.Get("Authorization") != "Bearer hook-token" {
			t.Errorf("webhook request %v: %v", r.Header, err)
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		hooks <- e
	}))
	defer rcv.Close()
	t.Setenv("QUOTA_BROKER_ALERT_WEBHOOK_TOKEN", "hook-token")

	addr, stop := inProcess(t, "serve", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--data", filepath.Join(t.TempDir(), "s.db"),
		"--aws-endpoint", hs.URL, "--refresh", "1h", "--log-level", "error",
		"--alert-webhook", rcv.URL+"/hook", "--alert-window", "3s", "--alert-interval", "100ms", "--alert-min-calls", "10")
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	qc := quotaclient.New(conn, quotaclient.WithThrottleRetries(1, time.Millisecond))
	rt := bedrockruntime.NewFromConfig(aws.Config{Region: "us-east-1", Credentials: credentials.NewStaticCredentialsProvider("AKID", "SECRET", "")},
		func(o *bedrockruntime.Options) { o.BaseEndpoint = aws.String(hs.URL); o.Retryer = aws.NopRetryer{} }, quotaclient.WithLeases(qc))

	// Eight callers, at most 50 calls each, until the alert has fired.
	ctx, stopTraffic := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var mu sync.Mutex
	outcomes := map[string]int{}
	for range 8 {
		wg.Go(func() {
			for range 50 {
				_, err := rt.Converse(ctx, &bedrockruntime.ConverseInput{
					ModelId: aws.String(sonnetProfile),
					Messages: []rttypes.Message{{Role: rttypes.ConversationRoleUser,
						Content: []rttypes.ContentBlock{&rttypes.ContentBlockMemberText{Value: "Say hello. sim:output_tokens=100"}}}},
					InferenceConfig: &rttypes.InferenceConfiguration{MaxTokens: aws.Int32(100)},
				})
				if ctx.Err() != nil {
					return
				}
				mu.Lock()
				switch {
				case err == nil:
					outcomes["ok"]++
				case strings.Contains(err.Error(), "ThrottlingException"):
					outcomes["throttled"]++
				default:
					outcomes["error"]++
				}
				mu.Unlock()
			}
		})
	}
	defer func() { stopTraffic(); wg.Wait() }()

	next := func(what string) alert.Event {
		t.Helper()
		select {
		case e := <-hooks:
			return e
		case <-time.After(30 * time.Second):
			mu.Lock()
			defer mu.Unlock()
			t.Fatalf("no %s alert at the webhook within 30s; calls: %v", what, outcomes)
			return alert.Event{}
		}
	}
	f := next("firing")
	if f.Status != alert.StatusFiring || f.Rule != alert.RuleThrottleRate || f.Budget.Scope != "cross-region" ||
		!strings.Contains(f.Budget.Model, "claude-sonnet-4-5") || f.Value <= 0.01 || f.Threshold != 0.01 ||
		!strings.Contains(f.Text, "[FIRING] quota-broker throttle_rate us-east-1 cross-region") {
		t.Fatalf("first webhook event %+v", f)
	}
	t.Logf("firing: %s", f.Summary)

	u, _ := metricsURL.Load(t.Name())
	mr, err := http.Get(u.(string))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(mr.Body)
	mr.Body.Close()
	want := `quotabroker_alert_firing{model="anthropic.claude-sonnet-4-5-20250929-v1:0",region="us-east-1",rule="throttle_rate",scope="cross-region"} 1`
	if !strings.Contains(string(body), want) {
		t.Fatalf("/metrics lacks %s:\n%s", want, grepLines(string(body), "quotabroker_alert_firing"))
	}

	stopTraffic()
	wg.Wait()
	r := next("resolved")
	if r.Status != alert.StatusResolved || r.Rule != alert.RuleThrottleRate || r.Budget != f.Budget || !r.Since.Equal(f.Since) {
		t.Fatalf("after the traffic stopped: %+v", r)
	}
	t.Logf("resolved: %s; calls %v", r.Summary, outcomes)
	if err := stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	select {
	case e := <-hooks:
		t.Fatalf("an event after the resolution: %+v", e)
	default:
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
