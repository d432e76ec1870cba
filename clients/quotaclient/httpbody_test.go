package quotaclient_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/bedrockruntime"
	"github.com/aws/aws-sdk-go-v2/service/bedrockruntime/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/bedrockqb/quotabroker/clients/quotaclient"
)

// bodyRecorder answers every request with an empty JSON object and notes
// whether the request body offered io.WriterTo.
type bodyRecorder struct{ writerTo, seen bool }

func (r *bodyRecorder) Do(req *http.Request) (*http.Response, error) {
	if req.Body != nil && req.Body != http.NoBody {
		r.seen = true
		_, r.writerTo = req.Body.(io.WriterTo)
		io.Copy(io.Discard, req.Body)
		req.Body.Close()
	}
	return &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {"application/json"}},
		Body: io.NopCloser(strings.NewReader(`{"inputTokens": 3}`)), Request: req}, nil
}

// TestWithLeasesHidesWriterTo checks that a client built WithLeases hands
// net/http request bodies without io.WriterTo, the workaround for the
// smithy-go race that closes connections mid-response (see httpbody.go).
// Without the option the SDK's body offers WriterTo, so the check can fail.
func TestWithLeasesHidesWriterTo(t *testing.T) {
	conn, err := grpc.NewClient("127.0.0.1:1", grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	call := func(opts ...func(*bedrockruntime.Options)) *bodyRecorder {
		rec := &bodyRecorder{}
		rt := bedrockruntime.New(bedrockruntime.Options{Region: "us-east-1", HTTPClient: rec,
			Credentials: credentials.NewStaticCredentialsProvider("AKID", "SECRET", "")}, opts...)
		// CountTokens passes the lease middleware untouched: only the HTTP
		// client is under test.
		_, err := rt.CountTokens(context.Background(), &bedrockruntime.CountTokensInput{ModelId: aws.String("anthropic.claude-3-haiku-20240307-v1:0"),
			Input: &types.CountTokensInputMemberConverse{Value: types.ConverseTokensRequest{Messages: []types.Message{{Role: types.ConversationRoleUser,
				Content: []types.ContentBlock{&types.ContentBlockMemberText{Value: "hi"}}}}}}})
		if err != nil {
			t.Fatal(err)
		}
		if !rec.seen {
			t.Fatal("the request had no body")
		}
		return rec
	}
	if !call().writerTo {
		t.Fatal("the SDK's request body no longer offers io.WriterTo: the workaround (and this test) may be obsolete")
	}
	if call(quotaclient.WithLeases(quotaclient.New(conn))).writerTo {
		t.Fatal("WithLeases left io.WriterTo on the request body")
	}
}
