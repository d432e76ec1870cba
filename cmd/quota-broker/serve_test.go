package main

import (
	"context"
	"io"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bedrockqb/quotabroker/broker/bolt"
)

// A Run that fails half way (the state file open, the budgets file
// missing) leaves nothing behind once closed: the state file is released,
// so another process, or this one, opens it again.
func TestMainCloseAfterFailedRun(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	data := filepath.Join(dir, "s.db")
	m := NewMain(io.Discard, io.Discard)
	if err := m.ParseFlags([]string{"--listen", "127.0.0.1:0", "--data", data, "--budgets", filepath.Join(dir, "missing.json")}); err != nil {
		t.Fatal(err)
	}
	if err := m.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "missing.json") {
		t.Fatalf("Run with a missing budgets file: %v", err)
	}
	if err := m.Close(); err != nil {
		t.Fatalf("Close after a failed Run: %v", err)
	}
	s, err := bolt.Open(data, bolt.Options{})
	if err != nil {
		t.Fatalf("state file after Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}
