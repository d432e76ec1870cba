package docs

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// tutorialBlock is one fenced block of docs/tutorial.md that the test runs,
// with the output the tutorial shows for it (the text block right after it).
type tutorialBlock struct {
	lang, code, want string
	line             int
}

// tutorialBlocks returns the ```sh and ```python blocks of a Markdown file in
// order. A ```text block that directly follows one (only blank lines between)
// is that block's expected output.
func tutorialBlocks(md string) []tutorialBlock {
	var blocks []tutorialBlock
	lines := strings.Split(md, "\n")
	lastRunnable := -1 // index in blocks of a runnable block with nothing but blank lines since
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		if !strings.HasPrefix(l, "```") {
			if strings.TrimSpace(l) != "" {
				lastRunnable = -1
			}
			continue
		}
		lang := strings.TrimSpace(strings.TrimPrefix(l, "```"))
		start := i + 1
		for i++; i < len(lines) && !strings.HasPrefix(lines[i], "```"); i++ {
		}
		body := strings.Join(lines[start:min(i, len(lines))], "\n") + "\n"
		switch {
		case lang == "sh" || lang == "python":
			blocks = append(blocks, tutorialBlock{lang: lang, code: body, line: start})
			lastRunnable = len(blocks) - 1
		case lang == "text" && lastRunnable >= 0:
			blocks[lastRunnable].want = body
			lastRunnable = -1
		default:
			lastRunnable = -1
		}
	}
	return blocks
}

var (
	tutorialNumber = regexp.MustCompile(`[0-9][0-9.,]*`)
	tutorialSpace  = regexp.MustCompile(`\s+`)
)

// tutorialMissing returns the first line of want that is not found in got,
// looking for want's lines in order. Figures vary from run to run, so a run
// of digits in want matches any figure, and any run of spaces any spaces; a
// line "..." stands for lines the tutorial leaves out.
func tutorialMissing(want, got string) string {
	gotLines := strings.Split(got, "\n")
	next := 0
	for _, w := range strings.Split(want, "\n") {
		w = strings.TrimSpace(w)
		if w == "" || w == "..." {
			continue
		}
		var re strings.Builder
		last := 0
		for _, m := range tutorialNumber.FindAllStringIndex(w, -1) {
			re.WriteString(regexp.QuoteMeta(w[last:m[0]]))
			re.WriteString(`[0-9][0-9.,]*`)
			last = m[1]
		}
		re.WriteString(regexp.QuoteMeta(w[last:]))
		pattern := regexp.MustCompile(tutorialSpace.ReplaceAllString(re.String(), `\s+`))
		found := false
		for ; next < len(gotLines); next++ {
			if pattern.MatchString(gotLines[next]) {
				found = true
				next++
				break
			}
		}
		if !found {
			return w
		}
	}
	return ""
}

func TestTutorialBlocks(t *testing.T) {
	md := "text\n```sh\necho a\n```\n\n```text\na\n```\n```console\n$ skipped\n```\n" +
		"```python\nprint(1)\n```\nprose between\n```text\nnot its output\n```\n"
	got := tutorialBlocks(md)
	want := []tutorialBlock{{lang: "sh", code: "echo a\n", want: "a\n", line: 2}, {lang: "python", code: "print(1)\n", line: 12}}
	if len(got) != len(want) {
		t.Fatalf("tutorialBlocks = %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("block %d = %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestTutorialMissing(t *testing.T) {
	got := "Label: Invocations\nSum 12.0 at 10:41\nSum 3.0 at 10:42\nStateValue    ALARM\n"
	for _, tc := range []struct{ want, missing string }{
		{"Sum 1.0 at 10:00\n...\nStateValue ALARM", ""},
		{"StateValue ALARM\nSum 1.0 at 10:00", "Sum 1.0 at 10:00"}, // out of order
		{"StateValue OK", "StateValue OK"},
		{"Label: Throttles", "Label: Throttles"},
	} {
		if m := tutorialMissing(tc.want, got); m != tc.missing {
			t.Errorf("tutorialMissing(%q) = %q, want %q", tc.want, m, tc.missing)
		}
	}
}

// TestTutorial runs every command and script of docs/tutorial.md, in order,
// against a live "quota-broker demo" on free loopback ports, so that the
// tutorial cannot rot. Shell blocks run in bash and share exported variables
// (as in one terminal); Python blocks run in the default python3 with that
// environment. A block fails the test when it exits non-zero or when its
// output lacks a line of the output the tutorial shows for it.
func TestTutorial(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the whole tutorial (about two minutes)")
	}
	// The reader's tools: the AWS CLI, boto3 in the default python3, jq.
	for _, check := range [][]string{{"aws", "--version"}, {"python3", "-c", "import boto3"}, {"jq", "--version"}} {
		if err := exec.Command(check[0], check[1:]...).Run(); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("the tutorial needs %q: %v", strings.Join(check, " "), err)
			}
			t.Skipf("the tutorial needs %q; set CI to fail instead: %v", strings.Join(check, " "), err)
		}
	}
	md, err := os.ReadFile("tutorial.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := tutorialBlocks(string(md))
	if len(blocks) < 10 {
		t.Fatalf("found %d runnable blocks in tutorial.md; the parser or the tutorial is broken", len(blocks))
	}

	bin := t.TempDir()
	tutorialBuild(t, bin)
	ports := tutorialDemo(t, filepath.Join(bin, "quota-broker"))

	work := t.TempDir()
	state := filepath.Join(work, ".tutorial-env")
	// The tutorial's own first block sets credentials; keep a developer's AWS
	// config and profile out of the run.
	env := fmt.Sprintf("export PATH=%q\nexport HOME=%q\nexport AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null\nunset AWS_PROFILE AWS_ENDPOINT_URL\n",
		bin+string(os.PathListSeparator)+os.Getenv("PATH"), work)
	if err := os.WriteFile(state, []byte(env), 0o600); err != nil {
		t.Fatal(err)
	}
	rewrite := strings.NewReplacer("127.0.0.1:8566", ports.sim, "127.0.0.1:50051", ports.broker, "127.0.0.1:9464", ports.http)
	for i, b := range blocks {
		code := rewrite.Replace(b.code)
		script := filepath.Join(work, fmt.Sprintf("block%02d.%s", i, b.lang))
		if err := os.WriteFile(script, []byte(code), 0o600); err != nil {
			t.Fatal(err)
		}
		var cmdline string
		if b.lang == "sh" {
			// Sourced under -e, so the first failing command fails the block;
			// exports are saved for the next block, as one terminal keeps them.
			cmdline = fmt.Sprintf("set -eo pipefail; source %q; source %q; export -p > %q", state, script, state)
		} else {
			cmdline = fmt.Sprintf("set -e; source %q; exec python3 %q", state, script)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		cmd := exec.CommandContext(ctx, "bash", "--noprofile", "--norc", "-c", cmdline)
		cmd.Dir = work
		cmd.Env = []string{"LANG=C.UTF-8", "PATH=" + os.Getenv("PATH")}
		start := time.Now()
		out, err := cmd.CombinedOutput()
		cancel()
		t.Logf("tutorial.md:%d (%s, %.1fs):\n%s", b.line, b.lang, time.Since(start).Seconds(), out)
		if err != nil {
			t.Fatalf("tutorial.md:%d: the %s block failed: %v\n%s", b.line, b.lang, err, code)
		}
		if b.want != "" {
			if m := tutorialMissing(rewrite.Replace(b.want), string(out)); m != "" {
				t.Fatalf("tutorial.md:%d: the output lacks the line %q that the tutorial shows", b.line, m)
			}
		}
	}
}

// tutorialBuild puts quota-broker and grpcurl into bin.
func tutorialBuild(t *testing.T, bin string) {
	t.Helper()
	build := exec.Command("go", "build", "-o", filepath.Join(bin, "quota-broker"), "../cmd/quota-broker")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build quota-broker: %v\n%s", err, out)
	}
	if p, err := exec.LookPath("grpcurl"); err == nil {
		if err := os.Symlink(p, filepath.Join(bin, "grpcurl")); err != nil {
			t.Fatal(err)
		}
		return
	}
	if p, err := filepath.Abs("../.bin/grpcurl"); err == nil {
		if _, err := os.Stat(p); err == nil {
			if err := os.Symlink(p, filepath.Join(bin, "grpcurl")); err != nil {
				t.Fatal(err)
			}
			return
		}
	}
	// The version the README names; the Go module proxy serves it.
	install := exec.Command("go", "install", "github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.3")
	install.Env = append(os.Environ(), "GOBIN="+bin)
	if out, err := install.CombinedOutput(); err != nil {
		t.Fatalf("install grpcurl: %v\n%s", err, out)
	}
}

type tutorialPorts struct{ broker, sim, http string }

// tutorialDemo starts "quota-broker demo" with every port chosen by the
// kernel, reads the addresses it prints, and stops it (SIGINT, then waits)
// when the test ends.
func tutorialDemo(t *testing.T, quotaBroker string) tutorialPorts {
	t.Helper()
	cmd := exec.Command(quotaBroker, "demo", "--listen", "127.0.0.1:0", "--sim-listen", "127.0.0.1:0", "--http", "127.0.0.1:0")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(t.TempDir(), "demo.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close() // the child holds its own descriptor
	cmd.Stderr = logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logs := func() string { b, _ := os.ReadFile(logPath); return string(b) }

	// One goroutine reads the demo's stdout: it hands over the addresses,
	// drains the rest, and reports the exit.
	found := make(chan tutorialPorts, 1)
	done := make(chan error, 1)
	go func() {
		var p tutorialPorts
		addr := func(line, prefix string) string {
			rest := strings.TrimPrefix(strings.TrimPrefix(line, prefix), "http://")
			return strings.FieldsFunc(rest, func(r rune) bool { return r == ' ' || r == '/' })[0]
		}
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			switch l := sc.Text(); {
			case strings.HasPrefix(l, "quota-broker listening on "):
				p.broker = addr(l, "quota-broker listening on ")
			case strings.HasPrefix(l, "Bedrock simulator on "):
				p.sim = addr(l, "Bedrock simulator on ")
			case strings.HasPrefix(l, "metrics on "):
				p.http = addr(l, "metrics on ")
			}
			if p.broker != "" && p.sim != "" && p.http != "" {
				found <- p
				break
			}
		}
		io.Copy(io.Discard, stdout)
		done <- cmd.Wait()
	}()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGINT)
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("demo exited with %v; its log:\n%s", err, logs())
			}
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Errorf("demo did not stop within 30s of SIGINT")
		}
	})
	select {
	case p := <-found:
		return p
	case err := <-done:
		done <- err // for the cleanup
		t.Fatalf("demo exited before printing its addresses (%v); its log:\n%s", err, logs())
	case <-time.After(2 * time.Minute):
		t.Fatalf("demo did not print its addresses within 2 minutes; its log:\n%s", logs())
	}
	panic("unreachable")
}
