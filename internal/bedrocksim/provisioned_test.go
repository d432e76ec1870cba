package bedrocksim

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/bedrock"
	rttypes "github.com/aws/aws-sdk-go-v2/service/bedrockruntime/types"
)

// TestProvisionedThroughputOwnCapacity: a call to a provisioned model ARN
// draws on the throughput's capacity alone (model units x tokens per unit),
// charged without burndown, throttled like AWS when it is exceeded, and the
// on-demand quota sees none of it; the throughput is listed in its Region
// with the status the test sets, and calls fail once it is not InService.
func TestProvisionedThroughputOwnCapacity(t *testing.T) {
	t.Parallel()
	sc := testScenario()
	sc.ProvisionedModelThroughputs = []ProvisionedThroughput{
		{Name: "pt-haiku", ModelID: haiku3, ModelUnits: 2, Region: "us-east-1", TokensPerMinutePerUnit: 1000},
		{Name: "pt-west", ModelID: haiku3, ModelUnits: 1, Region: "us-west-2", TokensPerMinutePerUnit: 1000},
	}
	h := newHarness(t, sc)
	ctx := context.Background()
	arn := "arn:aws:bedrock:us-east-1:111122223333:provisioned-model/pt-haiku"
	listed := func() []string {
		t.Helper()
		out, err := h.br.ListProvisionedModelThroughputs(ctx, &bedrock.ListProvisionedModelThroughputsInput{})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, p := range out.ProvisionedModelSummaries {
			got = append(got, *p.ProvisionedModelArn+" "+string(p.Status))
		}
		return got
	}
	if got := listed(); len(got) != 1 || got[0] != arn+" InService" {
		t.Fatalf("listed in us-east-1: %v", got)
	}
	ptStats := func() QuotaStats {
		for _, q := range h.sim.Stats().Quotas {
			if q.Code == "provisioned/pt-haiku" {
				return q
			}
		}
		return QuotaStats{}
	}
	// 500 + 1,000 reserved of 2,000; settles to 500 + 100 (no burndown).
	out, err := h.rt.Converse(ctx, converseIn(arn, prompt(500), 1000))
	if err != nil || *out.Usage.OutputTokens != 100 {
		t.Fatalf("first call: %v", err)
	}
	if q := ptStats(); q.TrueCapacity != 2000 || q.Available != 1400 || q.Admitted != 1 {
		t.Fatalf("after one call: %+v", q)
	}
	// 1,500 more does not fit in 1,400: throttled, consuming nothing.
	_, err = h.rt.Converse(ctx, converseIn(arn, prompt(500), 1000))
	var te *rttypes.ThrottlingException
	if !errors.As(err, &te) {
		t.Fatalf("second call: %v, want a ThrottlingException", err)
	}
	if q := ptStats(); q.Available != 1400 || q.Throttles != 1 {
		t.Fatalf("after the throttle: %+v", q)
	}
	if q, _ := h.sim.Quota("us-east-1", "L-HAIKUTPM"); q.Requests != 0 {
		t.Fatalf("the on-demand quota saw %d requests of the throughput's", q.Requests)
	}
	h.clock.Advance(time.Minute)
	if _, err := h.rt.Converse(ctx, converseIn(arn, prompt(500), 1000)); err != nil {
		t.Fatalf("a minute later: %v", err)
	}
	// Another Region's throughput is not callable here.
	var ve *rttypes.ValidationException
	if _, err := h.rt.Converse(ctx, converseIn("arn:aws:bedrock:us-west-2:111122223333:provisioned-model/pt-west", prompt(5), 10)); !errors.As(err, &ve) {
		t.Fatalf("pt-west called in us-east-1: %v, want a ValidationException", err)
	}
	if err := h.sim.SetProvisionedStatus("pt-haiku", "Updating"); err != nil {
		t.Fatal(err)
	}
	if got := listed(); len(got) != 1 || got[0] != arn+" Updating" {
		t.Fatalf("listed while updating: %v", got)
	}
	if _, err := h.rt.Converse(ctx, converseIn(arn, prompt(5), 10)); !errors.As(err, &ve) || !strings.Contains(err.Error(), "not InService") {
		t.Fatalf("call while updating: %v", err)
	}
	if err := h.sim.SetProvisionedStatus("pt-haiku", "Deleted"); err != nil {
		t.Fatal(err)
	}
	if got := listed(); len(got) != 0 {
		t.Fatalf("listed once deleted: %v", got)
	}
	if _, err := h.rt.Converse(ctx, converseIn(arn, prompt(5), 10)); !errors.As(err, &ve) {
		t.Fatalf("call once deleted: %v", err)
	}
	if err := h.sim.SetProvisionedStatus("pt-haiku", "Gone"); err == nil {
		t.Fatal("an unknown status was accepted")
	}
	if err := h.sim.SetProvisionedStatus("nope", "InService"); err == nil {
		t.Fatal("an unknown throughput was accepted")
	}
}
