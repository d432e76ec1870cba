package bedrocksim

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsmiddleware "github.com/aws/aws-sdk-go-v2/aws/middleware"
	"github.com/aws/aws-sdk-go-v2/service/bedrockruntime"
	rttypes "github.com/aws/aws-sdk-go-v2/service/bedrockruntime/types"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

func converseIn(modelID, text string, maxTokens int32) *bedrockruntime.ConverseInput {
	in := &bedrockruntime.ConverseInput{
		ModelId: aws.String(modelID),
		Messages: []rttypes.Message{{
			Role:    rttypes.ConversationRoleUser,
			Content: []rttypes.ContentBlock{&rttypes.ContentBlockMemberText{Value: text}},
		}},
	}
	if maxTokens > 0 {
		in.InferenceConfig = &rttypes.InferenceConfiguration{MaxTokens: aws.Int32(maxTokens)}
	}
	return in
}

// prompt returns text of exactly n estimated tokens (4 characters each).
func prompt(n int) string { return strings.Repeat("abcd", n) }

func TestConverseReportsUsage(t *testing.T) {
	t.Parallel()
	h := newHarness(t, testScenario())
	out, err := h.rt.Converse(context.Background(), converseIn("us."+sonnet45, prompt(250), 1000))
	if err != nil {
		t.Fatal(err)
	}
	u := out.Usage
	if *u.InputTokens != 250 || *u.OutputTokens != 100 || *u.TotalTokens != 350 {
		t.Fatalf("usage = in %d out %d total %d", *u.InputTokens, *u.OutputTokens, *u.TotalTokens)
	}
	msg := out.Output.(*rttypes.ConverseOutputMemberMessage).Value
	if text := msg.Content[0].(*rttypes.ContentBlockMemberText).Value; text == "" || out.StopReason != rttypes.StopReasonEndTurn {
		t.Fatalf("text %q stop %q", text, out.StopReason)
	}
}

func TestThrottleWireShapeAndSDKError(t *testing.T) {
	t.Parallel()
	sc := testScenario()
	sc.Quotas["us-east-1"][2].TrueValue = f64(100) // L-HAIKUTPM: nothing fits
	h := newHarness(t, sc)

	// On the wire: status, header and body exactly as Bedrock sends them.
	body := `{"anthropic_version":"bedrock-2023-05-31","max_tokens":200,"messages":[{"role":"user","content":"hi"}]}`
	resp, err := http.Post(h.url+"/model/"+strings.ReplaceAll(haiku3, ":", "%3A")+"/invoke", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 429 ||
		resp.Header.Get("X-Amzn-ErrorType") != "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/" ||
		string(b) != `{"message":"Too many tokens, please wait before trying again."}` {
		t.Fatalf("got %d %q %s", resp.StatusCode, resp.Header.Get("X-Amzn-ErrorType"), b)
	}

	// Through the SDK: a typed ThrottlingException.
	_, err = h.rt.Converse(context.Background(), converseIn(haiku3, "hello", 200))
	var te *rttypes.ThrottlingException
	if !errors.As(err, &te) || te.ErrorMessage() != "Too many tokens, please wait before trying again." {
		t.Fatalf("err = %v, want ThrottlingException", err)
	}
	var hre *smithyhttp.ResponseError
	if !errors.As(err, &hre) || hre.HTTPStatusCode() != 429 {
		t.Fatalf("err = %v, want HTTP 429", err)
	}
}

func TestRPMThrottleMessage(t *testing.T) {
	t.Parallel()
	h := newHarness(t, testScenario()) // Llama: 2 RPM
	ctx := context.Background()
	for i := range 2 {
		if _, err := h.rt.Converse(ctx, converseIn(llama31, "hi", 100)); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
	}
	_, err := h.rt.Converse(ctx, converseIn(llama31, "hi", 100))
	var te *rttypes.ThrottlingException
	if !errors.As(err, &te) || te.ErrorMessage() != "Too many requests, please wait before trying again." {
		t.Fatalf("third request: %v", err)
	}
	h.clock.Advance(30 * time.Second) // refills one request
	if _, err := h.rt.Converse(ctx, converseIn(llama31, "hi", 100)); err != nil {
		t.Fatalf("after refill: %v", err)
	}
}

func TestProfileOnlyModelRejectsBareID(t *testing.T) {
	t.Parallel()
	h := newHarness(t, testScenario())
	ctx := context.Background()
	_, err := h.rt.Converse(ctx, converseIn(sonnet45, "hi", 10))
	var ve *rttypes.ValidationException
	if !errors.As(err, &ve) || !strings.Contains(ve.ErrorMessage(), "inference profile") {
		t.Fatalf("bare id: %v, want ValidationException asking for a profile", err)
	}
	// An ARN of the profile works; an unknown id does not.
	arn := "arn:aws:bedrock:us-east-1:111122223333:inference-profile/us." + sonnet45
	if _, err := h.rt.Converse(ctx, converseIn(arn, "hi", 10)); err != nil {
		t.Fatalf("profile ARN: %v", err)
	}
	if _, err := h.rt.Converse(ctx, converseIn("eu."+sonnet45, "hi", 10)); !errors.As(err, &ve) {
		t.Fatalf("unknown profile: %v", err)
	}
	if _, err := h.rt.Converse(ctx, converseIn("us."+sonnet45, "hi", 64001)); !errors.As(err, &ve) {
		t.Fatalf("max_tokens above the model's limit: %v", err)
	}
}

// TestReservationAndSettlement follows one quota through admission and
// settlement, checking the bucket after every step. Time is frozen, so no
// refill blurs the arithmetic.
func TestReservationAndSettlement(t *testing.T) {
	t.Parallel()
	h := newHarness(t, testScenario())
	ctx := context.Background()
	const code, capacity = "L-SON45XR", 50000.0 // hidden; 100,000 published
	model := "us." + sonnet45
	avail := func() float64 {
		qs, _ := h.sim.Quota("us-east-1", code)
		return qs.Available
	}
	steps := []struct {
		name      string
		input     int
		maxTokens int32
		throttled bool
		after     float64 // available tokens after the step
	}{
		// 1,000 + 10,000 x 5 = 51,000 > 50,000: throttled although it would
		// really use 1,000 + 100 x 5 = 1,500. It consumes nothing.
		{"reservation too big", 1000, 10000, true, capacity},
		// 1,000 + 9,000 x 5 = 46,000 fits; settles to 1,500.
		{"fits", 1000, 9000, false, capacity - 1500},
		{"fits again", 1000, 9000, false, capacity - 3000},
		// 47,000 is available, 46,000 is needed.
		{"still fits", 1000, 9000, false, capacity - 4500},
		// Unset max_tokens reserves the model's 64,000 x 5.
		{"unset max_tokens", 10, 0, true, capacity - 4500},
	}
	for _, st := range steps {
		_, err := h.rt.Converse(ctx, converseIn(model, prompt(st.input), st.maxTokens))
		var te *rttypes.ThrottlingException
		if got := errors.As(err, &te); got != st.throttled || (!got && err != nil) {
			t.Fatalf("%s: err = %v, want throttled=%v", st.name, err, st.throttled)
		}
		if a := avail(); a != st.after {
			t.Fatalf("%s: available = %v, want %v", st.name, a, st.after)
		}
		if a := avail(); a > capacity || a < 0 {
			t.Fatalf("%s: available %v outside [0, %v]", st.name, a, capacity)
		}
	}
	// The global profile has its own quota.
	if _, err := h.rt.Converse(ctx, converseIn("global."+sonnet45, prompt(1000), 9000)); err != nil {
		t.Fatalf("global profile: %v", err)
	}
	if a := avail(); a != capacity-4500 {
		t.Fatalf("global traffic changed the cross-region quota: %v", a)
	}
	// A minute later the bucket is full again.
	h.clock.Advance(time.Minute)
	if a := avail(); a != capacity {
		t.Fatalf("after a minute available = %v, want %v", a, capacity)
	}
	st := h.sim.Stats()
	if st.Throttles != 2 || st.Admitted != 4 {
		t.Fatalf("stats = %+v", st)
	}
}

func TestHiddenCapacityIsEnforcedAndChanges(t *testing.T) {
	t.Parallel()
	sc := testScenario()
	sc.Runtime.Changes = []Change{{At: Duration(time.Minute), QuotaCode: "L-SON45XR", ScaleTrue: f64(0.6)}}
	h := newHarness(t, sc)
	ctx := context.Background()
	model := "us." + sonnet45
	// 60,000 is within the published 100,000 but above the hidden 50,000.
	if _, err := h.rt.Converse(ctx, converseIn(model, prompt(10000), 10000)); err == nil {
		t.Fatal("request above the hidden capacity was admitted")
	}
	if err := h.sim.SetCapacity("us-east-1", "L-SON45XR", CapacityChange{SetTrue: f64(100000)}); err != nil {
		t.Fatal(err)
	}
	h.clock.Advance(30 * time.Second) // refill to the new capacity
	if _, err := h.rt.Converse(ctx, converseIn(model, prompt(10000), 10000)); err != nil {
		t.Fatalf("after raising the capacity: %v", err)
	}
	h.clock.Advance(31 * time.Second) // the scenario change fires: x0.6
	if qs, _ := h.sim.Quota("us-east-1", "L-SON45XR"); qs.TrueCapacity != 60000 || qs.Applied != 100000 {
		t.Fatalf("after change: true %v applied %v", qs.TrueCapacity, qs.Applied)
	}
}

func TestTimeScale(t *testing.T) {
	t.Parallel()
	h := newHarness(t, testScenario(), func(c *Config) { c.Speed = 10 })
	ctx := context.Background()
	for range 2 {
		if _, err := h.rt.Converse(ctx, converseIn(llama31, "hi", 10)); err != nil {
			t.Fatal(err)
		}
	}
	start := h.sim.Now()
	h.clock.Advance(6 * time.Second) // one simulated minute at 10x
	if d := h.sim.Now().Sub(start); d != time.Minute {
		t.Fatalf("simulated time moved %v, want 1m", d)
	}
	for i := range 2 {
		if _, err := h.rt.Converse(ctx, converseIn(llama31, "hi", 10)); err != nil {
			t.Fatalf("request %d after a simulated minute: %v", i, err)
		}
	}
}

func TestInvokeModelUsageHeaders(t *testing.T) {
	t.Parallel()
	h := newHarness(t, testScenario())
	body := `{"anthropic_version":"bedrock-2023-05-31","max_tokens":300,"system":"` + prompt(100) +
		`","messages":[{"role":"user","content":[{"type":"text","text":"` + prompt(50) + `"}]}]}`
	out, err := h.rt.InvokeModel(context.Background(), &bedrockruntime.InvokeModelInput{
		ModelId: aws.String("us." + haiku3), Body: []byte(body), ContentType: aws.String("application/json"),
	})
	if err != nil {
		t.Fatal(err)
	}
	raw, ok := awsmiddleware.GetRawResponse(out.ResultMetadata).(*smithyhttp.Response)
	if !ok {
		t.Fatal("no raw response in result metadata")
	}
	in, _ := strconv.Atoi(raw.Header.Get("X-Amzn-Bedrock-Input-Token-Count"))
	outTok, _ := strconv.Atoi(raw.Header.Get("X-Amzn-Bedrock-Output-Token-Count"))
	if in != 150 || outTok != 100 {
		t.Fatalf("headers: input %d output %d", in, outTok)
	}
	var msg struct {
		Type  string
		Usage struct {
			InputTokens  int `json:"input_tokens"`
			OutputTokens int `json:"output_tokens"`
		}
		Content []struct{ Text string }
	}
	if err := json.Unmarshal(out.Body, &msg); err != nil || msg.Type != "message" || msg.Usage.OutputTokens != 100 || msg.Content[0].Text == "" {
		t.Fatalf("body %s: %v", out.Body, err)
	}
}

func TestPromptCacheReadsAreFree(t *testing.T) {
	t.Parallel()
	h := newHarness(t, testScenario())
	ctx := context.Background()
	in := &bedrockruntime.ConverseInput{
		ModelId: aws.String("us." + sonnet45),
		System:  []rttypes.SystemContentBlock{&rttypes.SystemContentBlockMemberText{Value: prompt(2000)}, &rttypes.SystemContentBlockMemberCachePoint{Value: rttypes.CachePointBlock{Type: rttypes.CachePointTypeDefault}}},
		Messages: []rttypes.Message{{Role: rttypes.ConversationRoleUser,
			Content: []rttypes.ContentBlock{&rttypes.ContentBlockMemberText{Value: prompt(10)}}}},
		InferenceConfig: &rttypes.InferenceConfiguration{MaxTokens: aws.Int32(200)},
	}
	first, err := h.rt.Converse(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	second, err := h.rt.Converse(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	if *first.Usage.CacheWriteInputTokens != 2000 || *second.Usage.CacheReadInputTokens != 2000 || *second.Usage.InputTokens != 10 {
		t.Fatalf("first %+v second %+v", first.Usage, second.Usage)
	}
	// Charged: (10 + 2000 + 500) then (10 + 500); the read is free.
	if qs, _ := h.sim.Quota("us-east-1", "L-SON45XR"); qs.Settled != 2510+510 {
		t.Fatalf("settled %v, want %v", qs.Settled, 2510+510)
	}
}

func TestConverseStream(t *testing.T) {
	t.Parallel()
	h := newHarness(t, testScenario())
	out, err := h.rt.ConverseStream(context.Background(), &bedrockruntime.ConverseStreamInput{
		ModelId: aws.String("us." + sonnet45),
		Messages: []rttypes.Message{{Role: rttypes.ConversationRoleUser,
			Content: []rttypes.ContentBlock{&rttypes.ContentBlockMemberText{Value: prompt(40)}}}},
		InferenceConfig: &rttypes.InferenceConfiguration{MaxTokens: aws.Int32(500)},
	})
	if err != nil {
		t.Fatal(err)
	}
	stream := out.GetStream()
	defer stream.Close()
	var text strings.Builder
	var usage *rttypes.TokenUsage
	var started, stopped bool
	for ev := range stream.Events() {
		switch e := ev.(type) {
		case *rttypes.ConverseStreamOutputMemberMessageStart:
			started = e.Value.Role == rttypes.ConversationRoleAssistant
		case *rttypes.ConverseStreamOutputMemberContentBlockDelta:
			text.WriteString(e.Value.Delta.(*rttypes.ContentBlockDeltaMemberText).Value)
		case *rttypes.ConverseStreamOutputMemberMessageStop:
			stopped = e.Value.StopReason == rttypes.StopReasonEndTurn
		case *rttypes.ConverseStreamOutputMemberMetadata:
			usage = e.Value.Usage
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	if !started || !stopped || text.Len() == 0 || usage == nil || *usage.InputTokens != 40 || *usage.OutputTokens != 100 {
		t.Fatalf("start %v stop %v text %d chars usage %+v", started, stopped, text.Len(), usage)
	}
}

func TestMidStreamThrottleSurfacesInErr(t *testing.T) {
	t.Parallel()
	sc := testScenario()
	sc.Runtime.Faults.MidStreamThrottleRate = 1
	h := newHarness(t, sc)
	out, err := h.rt.ConverseStream(context.Background(), &bedrockruntime.ConverseStreamInput{
		ModelId: aws.String("us." + sonnet45),
		Messages: []rttypes.Message{{Role: rttypes.ConversationRoleUser,
			Content: []rttypes.ContentBlock{&rttypes.ContentBlockMemberText{Value: prompt(40)}}}},
		InferenceConfig: &rttypes.InferenceConfiguration{MaxTokens: aws.Int32(500)},
	})
	if err != nil {
		t.Fatalf("the HTTP exchange itself succeeds: %v", err)
	}
	stream := out.GetStream()
	defer stream.Close()
	deltas := 0
	for ev := range stream.Events() {
		if _, ok := ev.(*rttypes.ConverseStreamOutputMemberContentBlockDelta); ok {
			deltas++
		}
	}
	var te *rttypes.ThrottlingException
	if !errors.As(stream.Err(), &te) || te.ErrorMessage() != string(reasonTPM) || deltas == 0 {
		t.Fatalf("Err() = %v after %d deltas, want ThrottlingException after some", stream.Err(), deltas)
	}
	// Settled on the 50 tokens emitted: 40 + 50 x 5.
	if qs, _ := h.sim.Quota("us-east-1", "L-SON45XR"); qs.Settled != 40+50*5 {
		t.Fatalf("settled %v", qs.Settled)
	}
}

func TestInvokeModelWithResponseStream(t *testing.T) {
	t.Parallel()
	h := newHarness(t, testScenario())
	body := `{"anthropic_version":"bedrock-2023-05-31","max_tokens":300,"messages":[{"role":"user","content":"` + prompt(30) + `"}]}`
	out, err := h.rt.InvokeModelWithResponseStream(context.Background(), &bedrockruntime.InvokeModelWithResponseStreamInput{
		ModelId: aws.String(haiku3), Body: []byte(body), ContentType: aws.String("application/json"),
	})
	if err != nil {
		t.Fatal(err)
	}
	stream := out.GetStream()
	defer stream.Close()
	var last map[string]json.RawMessage
	var types []string
	for ev := range stream.Events() {
		c, ok := ev.(*rttypes.ResponseStreamMemberChunk)
		if !ok {
			t.Fatalf("unexpected event %T", ev)
		}
		last = nil
		if err := json.Unmarshal(c.Value.Bytes, &last); err != nil {
			t.Fatal(err)
		}
		var typ string
		_ = json.Unmarshal(last["type"], &typ)
		types = append(types, typ)
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	var m struct {
		InputTokenCount  int `json:"inputTokenCount"`
		OutputTokenCount int `json:"outputTokenCount"`
	}
	if err := json.Unmarshal(last["amazon-bedrock-invocationMetrics"], &m); err != nil || m.InputTokenCount != 30 || m.OutputTokenCount != 100 {
		t.Fatalf("last chunk %v: %+v %v", last, m, err)
	}
	if types[0] != "message_start" || types[len(types)-1] != "message_stop" {
		t.Fatalf("chunk types %v", types)
	}
}

func TestCountTokens(t *testing.T) {
	t.Parallel()
	h := newHarness(t, testScenario())
	ctx := context.Background()
	out, err := h.rt.CountTokens(ctx, &bedrockruntime.CountTokensInput{
		ModelId: aws.String(sonnet45),
		Input: &rttypes.CountTokensInputMemberConverse{Value: rttypes.ConverseTokensRequest{
			Messages: []rttypes.Message{{Role: rttypes.ConversationRoleUser,
				Content: []rttypes.ContentBlock{&rttypes.ContentBlockMemberText{Value: prompt(123)}}}},
		}},
	})
	if err != nil || *out.InputTokens != 123 {
		t.Fatalf("CountTokens = %v, %v", out, err)
	}
	body := `{"anthropic_version":"bedrock-2023-05-31","max_tokens":10,"messages":[{"role":"user","content":"` + prompt(77) + `"}]}`
	out, err = h.rt.CountTokens(ctx, &bedrockruntime.CountTokensInput{
		ModelId: aws.String(haiku3),
		Input:   &rttypes.CountTokensInputMemberInvokeModel{Value: rttypes.InvokeModelTokensRequest{Body: []byte(body)}},
	})
	if err != nil || *out.InputTokens != 77 {
		t.Fatalf("CountTokens(invokeModel) = %v, %v", out, err)
	}
	_, err = h.rt.CountTokens(ctx, &bedrockruntime.CountTokensInput{ModelId: aws.String(llama31),
		Input: &rttypes.CountTokensInputMemberInvokeModel{Value: rttypes.InvokeModelTokensRequest{Body: []byte(body)}}})
	var ve *rttypes.ValidationException
	if !errors.As(err, &ve) {
		t.Fatalf("unsupported model: %v", err)
	}
}

func TestInjectedFaults(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		faults Faults
		check  func(error) bool
	}{
		{"503", Faults{ServiceUnavailableRate: 1}, func(err error) bool { var e *rttypes.ServiceUnavailableException; return errors.As(err, &e) }},
		{"not ready", Faults{ModelNotReadyRate: 1}, func(err error) bool { var e *rttypes.ModelNotReadyException; return errors.As(err, &e) }},
		{"timeout", Faults{ModelTimeoutRate: 1}, func(err error) bool { var e *rttypes.ModelTimeoutException; return errors.As(err, &e) }},
	} {
		sc := testScenario()
		sc.Runtime.Faults = tc.faults
		h := newHarness(t, sc)
		_, err := h.rt.Converse(context.Background(), converseIn(haiku3, "hi", 10))
		if !tc.check(err) {
			t.Errorf("%s: err = %v", tc.name, err)
		}
		if qs, _ := h.sim.Quota("us-east-1", "L-HAIKUTPM"); qs.Available != 20000 {
			t.Errorf("%s: a fault consumed quota: %v", tc.name, qs.Available)
		}
	}
}

func FuzzScanBody(f *testing.F) {
	f.Add([]byte(`{"messages":[{"role":"user","content":[{"text":"hi"},{"cachePoint":{"type":"default"}}]}],"inferenceConfig":{"maxTokens":10}}`))
	f.Add([]byte(`{"max_tokens":5,"messages":[{"role":"user","content":"x"}]}`))
	f.Add([]byte(`[1,"a",{"b":[]}]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		sc, err := scanBody(b)
		if err != nil {
			return
		}
		if sc.chars < 0 || sc.prefixChars > sc.chars || sc.maxTokens < 0 {
			t.Fatalf("scan %+v of %q", sc, b)
		}
	})
}

func TestInvokeModelBodyValidation(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil) // the default scenario has every family
	const tail = ", please reformat your input and try again."
	cases := []struct {
		model, body, want string // want "" means accepted
	}{
		{"anthropic.claude-3-haiku-20240307-v1:0", `{"anthropic_version":"bedrock-2023-05-31","max_tokens":50,"messages":[{"role":"user","content":"hi"}]}`, ""},
		{"anthropic.claude-3-haiku-20240307-v1:0", `{"anthropic_version":"bedrock-2023-05-31","messages":[{"role":"user","content":"hi"}]}`,
			"Malformed input request: #: required key [max_tokens] not found" + tail},
		{"anthropic.claude-3-haiku-20240307-v1:0", `{"max_tokens":"50","messages":[]}`,
			"Malformed input request: #: required key [anthropic_version] not found, #/max_tokens: expected type: Integer, found: String" + tail},
		{"anthropic.claude-3-haiku-20240307-v1:0", `{"anthropic_version":"2023-06-01","max_tokens":5,"messages":[],"prompt":"x"}`,
			"Malformed input request: #/anthropic_version: 2023-06-01 is not a valid enum value, #: extraneous key [prompt] is not permitted" + tail},
		{"amazon.titan-text-express-v1", `{"inputText":"hi","textGenerationConfig":{"maxTokenCount":20}}`, ""},
		{"amazon.nova-lite-v1:0", `{"inputText":"hi","textGenerationConfig":{"maxTokenCount":20}}`,
			"Malformed input request: #: required key [messages] not found, #: extraneous key [inputText] is not permitted, #: extraneous key [textGenerationConfig] is not permitted" + tail},
		{"amazon.nova-lite-v1:0", `{"schemaVersion":"messages-v1","messages":[{"role":"user","content":[{"text":"hi"}]}],"inferenceConfig":{"max_new_tokens":20}}`, ""},
		{"meta.llama3-1-8b-instruct-v1:0", `{"prompt":"hi","max_gen_len":20}`, ""},
		{"meta.llama3-1-8b-instruct-v1:0", `{"messages":[{"role":"user","content":"hi"}],"max_tokens":20}`,
			"Malformed input request: #: required key [prompt] not found, #: extraneous key [max_tokens] is not permitted, #: extraneous key [messages] is not permitted" + tail},
		{"amazon.titan-embed-text-v2:0", `{"inputText":"hi","dimensions":256}`, ""},
		{"amazon.titan-embed-text-v2:0", `[1]`, "Malformed input request: #: expected type: JSONObject" + tail},
	}
	for _, tc := range cases {
		_, err := h.rt.InvokeModel(context.Background(), &bedrockruntime.InvokeModelInput{
			ModelId: aws.String(tc.model), Body: []byte(tc.body), ContentType: aws.String("application/json")})
		var ve *rttypes.ValidationException
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s %s: %v", tc.model, tc.body, err)
		case tc.want != "" && (!errors.As(err, &ve) || ve.ErrorMessage() != tc.want):
			t.Errorf("%s %s:\n got %v\nwant ValidationException %q", tc.model, tc.body, err, tc.want)
		}
	}
	if st := h.sim.Stats(); st.Admitted != 5 {
		t.Errorf("admitted %d requests, want the 5 well-formed ones (a malformed body is refused before admission)", st.Admitted)
	}
}
