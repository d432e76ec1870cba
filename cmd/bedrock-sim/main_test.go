package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
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

func TestRunHelp(t *testing.T) {
	for _, arg := range []string{"--help", "-h", "help"} {
		var stdout, stderr bytes.Buffer
		if err := run(context.Background(), []string{arg}, &stdout, &stderr); err != nil {
			t.Fatalf("run %s: %v", arg, err)
		}
		if !bytes.Contains(stdout.Bytes(), []byte("Usage:\n  bedrock-sim [--listen")) || !bytes.Contains(stdout.Bytes(), []byte("BEDROCK_SIM_LISTEN")) {
			t.Fatalf("run %s printed %q", arg, stdout.String())
		}
	}
}

func TestRunPortInUseNamesTheFix(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	err = run(context.Background(), []string{"--listen", ln.Addr().String()}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "--listen") {
		t.Fatalf("listening on a used port: %v", err)
	}
}
