package docs

import (
	"slices"
	"testing"
)

// TestParseCommands: what counts as a command and as its output.
func TestParseCommands(t *testing.T) {
	md := "Intro\n\n" +
		"```sh\n" +
		"quota-broker serve        # a comment\n" +
		"# a whole-line comment\n" +
		"\n" +
		"grpcurl -plaintext -d '{\n" +
		"  \"model\": \"a # not a comment\"\n" +
		"}' localhost:50051 x/Y\n" +
		"quota-broker increase --model m \\\n" +
		"  --yes\n" +
		"```\n" +
		"\n" +
		"```json\n" +
		"{\"a\": 1}\n" +
		"```\n" +
		"\n" +
		"```\n" +
		"$ quota-broker report\n" +
		"REGION SCOPE\n" +
		"x y\n" +
		"$ true\n" +
		"```\n" +
		"```go\n" +
		"fmt.Println(\"not a command\")\n" +
		"```\n"
	cmds, err := parseCommands("doc.md", md)
	if err != nil {
		t.Fatal(err)
	}
	type want struct {
		line        int
		key, output string
	}
	var got []want
	for _, c := range cmds {
		got = append(got, want{c.line, c.key, c.output})
	}
	exp := []want{
		{4, "quota-broker serve", ""},
		{7, `grpcurl -plaintext -d '{ "model": "a # not a comment" }' localhost:50051 x/Y`, ""},
		{10, "quota-broker increase --model m --yes", `{"a": 1}`},
		{19, "quota-broker report", "REGION SCOPE\nx y"},
		{22, "true", ""},
	}
	if !slices.Equal(got, exp) {
		t.Errorf("got\n%+v\nwant\n%+v", got, exp)
	}
	if cmds[1].text != "grpcurl -plaintext -d '{\n  \"model\": \"a # not a comment\"\n}' localhost:50051 x/Y" {
		t.Errorf("a quoted newline is kept in the text run: %q", cmds[1].text)
	}

	for _, bad := range []string{"```sh\necho 'open\n```\n", "```sh\necho \\\n```\n", "```sh\necho\n"} {
		if _, err := parseCommands("bad.md", bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

// TestSkeleton: figures are masked, words are not.
func TestSkeleton(t *testing.T) {
	doc := "40 calls in 909ms: 40 ok\nusage reported by Bedrock: 400 input"
	if err := sameSkeleton(doc, "7 calls in 1.2s: 7 ok\nusage reported by Bedrock: 12 input", nil); err != nil {
		t.Error(err)
	}
	if err := sameSkeleton(doc, "7 calls in 1.2s: 7 failed\nusage reported by Bedrock: 12 input", nil); err == nil {
		t.Error("a changed word passed")
	}
	if err := jsonKeys(`{"a": {"b": 1}, "c": [{"d": 1}]}`, `{"a": {"b": 2, "x": 1}, "c": [{"d": 3}]}`); err != nil {
		t.Error(err)
	}
	if err := jsonKeys(`{"a": {"b": 1}}`, `{"a": {"x": 1}}`); err == nil {
		t.Error("a missing key passed")
	}
}
