package main

import (
	"context"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestAlertFlags(t *testing.T) {
	t.Setenv("QUOTA_BROKER_ALERT_WINDOW", "1m")
	t.Setenv("QUOTA_BROKER_ALERT_THROTTLE_RATE", "0.05")
	f, err := parseServeFlags([]string{"--alert-throttle-rate", "0.02", "--alert-utilisation", "0"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	a := f.alert
	if a.window != time.Minute || a.throttleRate != 0.02 || a.utilisation != 0 || a.utilisationFor != 5*time.Minute ||
		a.interval != 15*time.Second || a.minCalls != 20 || a.webhook != "" {
		t.Fatalf("alert flags %+v", a)
	}
	t.Setenv("QUOTA_BROKER_ALERT_WINDOW", "soon")
	if _, err := parseServeFlags(nil, io.Discard); err == nil || !strings.Contains(err.Error(), "QUOTA_BROKER_ALERT_WINDOW") {
		t.Fatalf("bad env: %v", err)
	}
}

func TestAlertFlagErrorsAreActionable(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--alert-utilisation", "1.5"}, "--alert-* flags: alert: utilisation 1.5 is outside (0, 1]"},
		{[]string{"--alert-throttle-rate", "-0.1"}, "throttle_rate -0.1"},
		{[]string{"--alert-window", "-1s"}, "window -1s is negative"},
		{[]string{"--alert-webhook", "hooks.example.com/x"}, "--alert-webhook: alert webhook \"hooks.example.com/x\": want an http:// or https:// URL"},
	} {
		args := append([]string{"serve", "--data", filepath.Join(t.TempDir(), "s.db")}, tc.args...)
		err := run(context.Background(), args, io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: got %v, want an error containing %q", tc.args, err, tc.want)
		}
	}
}
