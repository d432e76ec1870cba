package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/bedrock"
)

func TestRunServesAndStops(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	var stderr bytes.Buffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--listen", "127.0.0.1:0", "--speed", "10"}, pw, &stderr)
		pw.Close()
	}()
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		t.Fatalf("reading the banner: %v (stderr: %s)", err, stderr.String())
	}
	url := regexp.MustCompile(`http://127\.0\.0\.1:\d+`).FindString(line)
	if url == "" {
		t.Fatalf("banner has no endpoint URL: %q", line)
	}
	go func() { _, _ = io.Copy(io.Discard, pr) }() // drain anything else

	client := bedrock.NewFromConfig(aws.Config{
		Region: "us-east-1", Credentials: credentials.NewStaticCredentialsProvider("AKID", "SECRET", ""),
	}, func(o *bedrock.Options) { o.BaseEndpoint = aws.String(url) })
	out, err := client.ListFoundationModels(ctx, &bedrock.ListFoundationModelsInput{})
	if err != nil || len(out.ModelSummaries) == 0 {
		t.Fatalf("ListFoundationModels: %v", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run after cancel: %v", err)
	}
}

func TestRunRejectsBadInput(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "bad.json")
	if err := os.WriteFile(bad, []byte(`{"defaultRegion":""}`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"--speed", "0"},
		{"--scenario", bad},
		{"--scenario", filepath.Join(t.TempDir(), "missing.json")},
		{"--log-level", "loud"},
		{"extra"},
		{"--listen", "256.0.0.1:1"},
	} {
		var stderr bytes.Buffer
		if err := run(context.Background(), append([]string{"--listen", "127.0.0.1:0"}, args...), io.Discard, &stderr); err == nil {
			t.Errorf("run %v: no error", args)
		}
	}
}
