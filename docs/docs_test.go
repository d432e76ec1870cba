package docs

// The helpers every runner of documented commands shares: reading the
// commands out of Markdown, building the binaries once, a working
// directory per scene, starting servers on free loopback ports and running
// commands through bash with the documented ports rewritten. The runner of
// docs/tutorial.md reuses them; keep them free of any one document.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bedrockqb/quotabroker/internal/freeport"
)

// command is one command a document shows.
type command struct {
	file string // relative to the repository root, with slashes
	line int    // where the command starts (1-based)
	// text is the command as written, continuations joined: a backslash
	// and its newline become a space; a newline inside a quote stays.
	text string
	// key is text with every run of white space made one space: what a
	// scene names a command by.
	key string
	// output is the output the document shows for this command, or "":
	// the block after the ```sh block (for the block's last command), or
	// the lines after a `$ ` line.
	output string
}

func (c command) String() string { return fmt.Sprintf("%s:%d: %s", c.file, c.line, c.key) }

// documents lists the documents whose commands the tests run, relative to
// the repository root. docs/tutorial.md has a runner of its own.
func documents(t testing.TB) []string {
	t.Helper()
	root := repoRoot(t)
	files := []string{"README.md", "BENCHMARKS.md"}
	for _, pattern := range []string{"docs/*.md", "clients/*/README.md"} {
		m, err := filepath.Glob(filepath.Join(root, pattern))
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range m {
			rel, _ := filepath.Rel(root, f)
			rel = filepath.ToSlash(rel)
			if rel == "docs/tutorial.md" {
				continue
			}
			files = append(files, rel)
		}
	}
	return files
}

// repoRoot is the module's root: the tests run in docs/.
func repoRoot(t testing.TB) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Dir(wd)
}

// readCommands extracts the commands of the documents.
func readCommands(t testing.TB, files ...string) []command {
	t.Helper()
	root := repoRoot(t)
	var all []command
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(root, filepath.FromSlash(f)))
		if err != nil {
			t.Fatal(err)
		}
		cmds, err := parseCommands(f, string(b))
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, cmds...)
	}
	return all
}

// parseCommands reads the commands of one Markdown document.
func parseCommands(file, md string) ([]command, error) {
	lines := strings.Split(md, "\n")
	type block struct {
		lang  string
		start int // line number of the first line inside the fence
		body  []string
	}
	var blocks []block
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		if !strings.HasPrefix(l, "```") {
			continue
		}
		b := block{lang: strings.TrimSpace(strings.TrimPrefix(l, "```")), start: i + 2}
		for i++; i < len(lines) && !strings.HasPrefix(lines[i], "```"); i++ {
			b.body = append(b.body, lines[i])
		}
		if i == len(lines) {
			return nil, fmt.Errorf("%s:%d: code block not closed", file, b.start-1)
		}
		blocks = append(blocks, b)
	}
	var cmds []command
	for bi, b := range blocks {
		switch b.lang {
		case "sh":
			cs, err := splitCommands(file, b.start, b.body)
			if err != nil {
				return nil, err
			}
			if len(cs) > 0 && bi+1 < len(blocks) {
				// The next block is this one's output when only blank
				// lines stand between them.
				next := blocks[bi+1]
				if next.lang != "sh" && next.lang != "go" && next.lang != "yaml" &&
					strings.TrimSpace(strings.Join(lines[b.start-1+len(b.body)+1:next.start-2], "")) == "" {
					cs[len(cs)-1].output = strings.Join(next.body, "\n")
				}
			}
			cmds = append(cmds, cs...)
		case "":
			// A transcript: `$ command` lines, each followed by its output.
			for j := 0; j < len(b.body); j++ {
				if !strings.HasPrefix(b.body[j], "$ ") {
					continue
				}
				cs, err := splitCommands(file, b.start+j, []string{strings.TrimPrefix(b.body[j], "$ ")})
				if err != nil {
					return nil, err
				}
				var out []string
				for j+1 < len(b.body) && !strings.HasPrefix(b.body[j+1], "$ ") {
					j++
					out = append(out, b.body[j])
				}
				cs[len(cs)-1].output = strings.Join(out, "\n")
				cmds = append(cmds, cs...)
			}
		}
	}
	return cmds, nil
}

// splitCommands joins a ```sh block's lines into commands: a line ending in
// a backslash, or leaving a quote open, continues on the next; a `#` that
// starts a word outside quotes starts a comment.
func splitCommands(file string, start int, body []string) ([]command, error) {
	var cmds []command
	var cur strings.Builder
	first := 0
	var quote rune
	for i, l := range body {
		if cur.Len() == 0 {
			first = start + i
		}
		prev := ' '
		cut := len(l)
		for j, r := range l {
			switch {
			case quote != 0:
				if r == quote {
					quote = 0
				}
			case r == '\'' || r == '"':
				quote = r
			case r == '#' && (prev == ' ' || prev == '\t'):
				cut = j
			}
			if cut < len(l) {
				break
			}
			prev = r
		}
		part := strings.TrimRight(l[:cut], " \t")
		switch {
		case quote != 0:
			cur.WriteString(part + "\n")
			continue
		case strings.HasSuffix(part, "\\"):
			cur.WriteString(strings.TrimSuffix(part, "\\") + " ")
			continue
		}
		cur.WriteString(part)
		text := strings.TrimSpace(cur.String())
		cur.Reset()
		if text == "" {
			continue
		}
		cmds = append(cmds, command{file: file, line: first, text: text, key: strings.Join(strings.Fields(text), " ")})
	}
	if quote != 0 || cur.Len() > 0 {
		return nil, fmt.Errorf("%s:%d: command not finished at the end of its block", file, first)
	}
	return cmds, nil
}

// toolchain holds the binaries every scene runs, built once per test run.
type toolchain struct {
	once sync.Once
	dir  string // on PATH first: quota-broker, bedrock-sim, quotaclient-example, docs-example, grpcurl
	err  error
}

var tools toolchain

// binaries builds the project's commands into a directory (once for all
// scenes) and links the grpcurl found on PATH next to them. Without
// grpcurl the test skips, unless CI is set: .ci/test installs the pinned one.
func binaries(t testing.TB) string {
	t.Helper()
	grpcurl, err := exec.LookPath("grpcurl")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("grpcurl is not on PATH (bash .ci/tools.sh installs the pinned one into .bin/)")
		}
		t.Skip("grpcurl is not on PATH; export PATH=$PWD/.bin:$PATH after bash .ci/tools.sh (with CI set this fails)")
	}
	tools.once.Do(func() {
		dir, err := os.MkdirTemp("", "docs-bin-")
		if err != nil {
			tools.err = err
			return
		}
		tools.dir = dir
		root := repoRoot(t)
		build := exec.Command("go", "build", "-o", dir+string(os.PathSeparator),
			"./cmd/quota-broker", "./cmd/bedrock-sim")
		build.Dir = root
		if out, err := build.CombinedOutput(); err != nil {
			tools.err = fmt.Errorf("go build: %v\n%s", err, out)
			return
		}
		for pkg, name := range map[string]string{"./clients/quotaclient/example": "quotaclient-example", "./docs/example": "docs-example"} {
			build = exec.Command("go", "build", "-o", filepath.Join(dir, name), pkg)
			build.Dir = root
			if out, err := build.CombinedOutput(); err != nil {
				tools.err = fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
				return
			}
		}
		tools.err = os.Symlink(grpcurl, filepath.Join(dir, "grpcurl"))
	})
	if tools.err != nil {
		t.Fatal(tools.err)
	}
	return tools.dir
}

func TestMain(m *testing.M) {
	code := m.Run()
	if tools.dir != "" {
		os.RemoveAll(tools.dir)
	}
	os.Exit(code)
}

// world is where one scene runs: its own working directory, its own ports,
// its own processes.
type world struct {
	t    testing.TB
	root string
	dir  string // working directory: the repository's top-level entries linked in, files the commands write land here
	bin  string
	// The loopback addresses that stand for the documented ports.
	broker, sim, http string
	env               []string
	// replace holds a scene's extra text substitutions (placeholders such
	// as ID), applied after the standard rewrites.
	replace []string
}

// newWorld prepares a scene: the binaries, a working directory that looks
// like the repository (so relative paths in commands resolve) and three
// free ports.
func newWorld(t testing.TB) *world {
	t.Helper()
	w := &world{t: t, root: repoRoot(t), bin: binaries(t), dir: t.TempDir()}
	entries, err := os.ReadDir(w.root)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() == ".git" {
			continue
		}
		if err := os.Symlink(filepath.Join(w.root, e.Name()), filepath.Join(w.dir, e.Name())); err != nil {
			t.Fatal(err)
		}
	}
	w.broker, w.sim, w.http = freeAddr(t), freeAddr(t), freeAddr(t)
	w.env = append(os.Environ(),
		"PATH="+w.bin+string(os.PathListSeparator)+os.Getenv("PATH"),
		"HOME="+w.dir, // nothing a command writes for the user (caches, configs) outlives the scene
		// HOME moved, so the go command's settings are carried over.
		"GOCACHE="+goEnv(t, "GOCACHE"), "GOMODCACHE="+goEnv(t, "GOMODCACHE"), "GOPATH="+goEnv(t, "GOPATH"), "GOENV="+goEnv(t, "GOENV"),
		"QUOTA_BROKER_LISTEN="+w.broker, "QUOTA_BROKER_ADDR="+w.broker, "QUOTA_BROKER_HTTP="+w.http,
		"QUOTA_BROKER_DATA="+filepath.Join(w.dir, "quota-broker.db"),
		"BEDROCK_SIM_LISTEN="+w.sim,
		"AWS_ACCESS_KEY_ID=AKIDDOCS", "AWS_SECRET_ACCESS_KEY=docs", "AWS_REGION=us-east-1",
		"AWS_EC2_METADATA_DISABLED=true",
	)
	return w
}

// setenv adds variables (NAME=value) to every later command of the world.
func (w *world) setenv(kv ...string) { w.env = append(w.env, kv...) }

// goEnvs are the go command's settings that newWorld carries over, read once.
var goEnvs = sync.OnceValues(func() (map[string]string, error) {
	out, err := exec.Command("go", "env", "-json", "GOCACHE", "GOMODCACHE", "GOPATH", "GOENV").Output()
	if err != nil {
		return nil, fmt.Errorf("go env: %w", err)
	}
	m := map[string]string{}
	return m, json.Unmarshal(out, &m)
})

func goEnv(t testing.TB, name string) string {
	t.Helper()
	m, err := goEnvs()
	if err != nil {
		t.Fatal(err)
	}
	return m[name]
}

// freeAddr returns a loopback address no one listens on now, outside the
// kernel's ephemeral range (see internal/freeport). Another process may still
// take it before the scene does; the scene then fails to start its server and
// says so.
func freeAddr(t testing.TB) string {
	t.Helper()
	addr, err := freeport.Addr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

var (
	goRun    = regexp.MustCompile(`go run \./(cmd/quota-broker|cmd/bedrock-sim|clients/quotaclient/example|docs/example)\b`)
	optional = regexp.MustCompile(` \[(-[^\[\]]*)\]`)
)

// rewrite turns a documented command into the one run here: the built
// binaries for `go run` of the project's commands, the scene's own
// substitutions (placeholders), the world's ports for the documented ones,
// optional `[--flag value]` groups included, a trailing `&` dropped (the
// scene decides what runs in the background).
func (w *world) rewrite(text string) string {
	text = goRun.ReplaceAllStringFunc(text, func(s string) string {
		switch {
		case strings.HasSuffix(s, "quotaclient/example"):
			return "quotaclient-example"
		case strings.HasSuffix(s, "docs/example"):
			return "docs-example"
		default:
			return filepath.Base(strings.TrimPrefix(s, "go run ./"))
		}
	})
	if len(w.replace) > 0 {
		text = strings.NewReplacer(w.replace...).Replace(text)
	}
	port := func(addr string) string { _, p, _ := net.SplitHostPort(addr); return p }
	text = regexp.MustCompile(`\b50051\b`).ReplaceAllString(text, port(w.broker))
	text = regexp.MustCompile(`\b8566\b`).ReplaceAllString(text, port(w.sim))
	text = regexp.MustCompile(`\b9464\b`).ReplaceAllString(text, port(w.http))
	text = optional.ReplaceAllString(text, " $1")
	text = strings.TrimSuffix(strings.TrimSpace(text), "&")
	return strings.TrimSpace(text)
}

// result is what a command printed.
type result struct {
	stdout, stderr string
	err            error // from the process: nil on exit status 0
}

// bash runs one command to its end (at most timeout) and returns what it
// printed.
func (w *world) bash(text string, timeout time.Duration) result {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-c", "set -o pipefail\n"+text)
	cmd.Dir, cmd.Env = w.dir, w.env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// The whole process group ends with the command: a pipeline's or a
	// `go run`'s children too.
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("not finished within %v: %w", timeout, err)
	}
	return result{stdout: stdout.String(), stderr: stderr.String(), err: err}
}

// process is a command left running: a server, or a long campaign read
// until its first lines.
type process struct {
	cmd     *exec.Cmd
	mu      sync.Mutex
	out     bytes.Buffer  // stdout and stderr, interleaved
	changed chan struct{} // a token after each piece of output
	exited  chan struct{}
}

// start runs a command in the background; t.Cleanup stops it (SIGTERM to
// its process group, SIGKILL after 10 s) and waits for it.
func (w *world) start(text string) *process {
	w.t.Helper()
	cmd := exec.Command("bash", "-c", "exec "+text)
	cmd.Dir, cmd.Env = w.dir, w.env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	pr, pw, err := os.Pipe()
	if err != nil {
		w.t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		w.t.Fatal(err)
	}
	pw.Close()
	p := &process{cmd: cmd, changed: make(chan struct{}, 1), exited: make(chan struct{})}
	go func() { // owned by the process: ends when its output closes, after it exits
		buf := make([]byte, 32<<10)
		for {
			n, err := pr.Read(buf)
			if n > 0 {
				p.mu.Lock()
				p.out.Write(buf[:n])
				p.mu.Unlock()
				select {
				case p.changed <- struct{}{}:
				default:
				}
			}
			if err != nil {
				break
			}
		}
		pr.Close()
		cmd.Wait()
		close(p.exited)
	}()
	w.t.Cleanup(func() { p.stop() })
	return p
}

// output is what the process printed so far.
func (p *process) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// waitOutput waits until what the process printed matches re (use (?m)
// for ^ and $ at lines); it fails the test when the process ends or
// timeout passes first.
func (w *world) waitOutput(p *process, re *regexp.Regexp, timeout time.Duration) {
	w.t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		if re.MatchString(p.output()) {
			return
		}
		select {
		case <-p.changed:
		case <-p.exited:
			if re.MatchString(p.output()) {
				return
			}
			w.t.Fatalf("%q ended before printing %q:\n%s", p.cmd.Args[2], re, p.output())
		case <-deadline.C:
			w.t.Fatalf("%q did not print %q within %v:\n%s", p.cmd.Args[2], re, timeout, p.output())
		}
	}
}

// waitListening waits until addr accepts connections (the server is up),
// failing the test if the process p (nil: none) ends first.
func (w *world) waitListening(p *process, addr string, timeout time.Duration) {
	w.t.Helper()
	var exited <-chan struct{}
	name := addr
	if p != nil {
		exited, name = p.exited, p.cmd.Args[2]
	}
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		select {
		case <-exited:
			w.t.Fatalf("%q ended before listening on %s:\n%s", name, addr, p.output())
		case <-time.After(50 * time.Millisecond): // the retry interval of a poll for the port, not a wait for an event
		}
		if time.Now().After(deadline) {
			w.t.Fatalf("%q is not listening on %s after %v", name, addr, timeout)
		}
	}
}

// stop ends a process (SIGTERM to its group, SIGKILL after 10 s), waits for
// it and returns what it printed. Whatever else of its group is left once
// it has exited is killed: a campaign's own children (bench/cluster's
// replicas) may still be draining towards an etcd that is gone when the
// campaign itself has returned. Stopping twice is harmless.
func (p *process) stop() string {
	select {
	case <-p.exited:
	default:
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(10 * time.Second):
			syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
			<-p.exited
		}
	}
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL) // the group's stragglers; ESRCH when none
	return p.output()
}

// Checks of a command's output against the output its document shows.

// jsonKeys checks that got is JSON with every key doc's JSON has, at the
// same places (for arrays, doc's first element against got's first).
func jsonKeys(doc, got string) error {
	var d, g any
	if err := json.Unmarshal([]byte(doc), &d); err != nil {
		return fmt.Errorf("the documented output is not JSON: %v", err)
	}
	if err := json.Unmarshal([]byte(got), &g); err != nil {
		return fmt.Errorf("the output is not JSON: %v", err)
	}
	var missing []string
	var walk func(path string, d, g any)
	walk = func(path string, d, g any) {
		switch d := d.(type) {
		case map[string]any:
			gm, ok := g.(map[string]any)
			if !ok {
				missing = append(missing, path+" (not an object)")
				return
			}
			for k, v := range d {
				gv, ok := gm[k]
				if !ok {
					missing = append(missing, path+"."+k)
					continue
				}
				walk(path+"."+k, v, gv)
			}
		case []any:
			ga, ok := g.([]any)
			if !ok || (len(d) > 0 && len(ga) == 0) {
				missing = append(missing, path+"[] (not a non-empty array)")
				return
			}
			if len(d) > 0 {
				walk(path+"[0]", d[0], ga[0])
			}
		}
	}
	walk("", d, g)
	if len(missing) > 0 {
		slices.Sort(missing)
		return fmt.Errorf("keys the document shows are missing: %s", strings.Join(missing, ", "))
	}
	return nil
}

// sameLines checks that got has, in order, a line starting with each of
// the prefixes (after leading white space).
func sameLines(got string, prefixes ...string) error {
	lines := strings.Split(got, "\n")
	i := 0
	for _, p := range prefixes {
		for ; i < len(lines) && !strings.HasPrefix(strings.TrimSpace(lines[i]), p); i++ {
		}
		if i == len(lines) {
			return fmt.Errorf("no line starting with %q (in this order: %q)", p, prefixes)
		}
		i++
	}
	return nil
}

// headerFields returns the words of the first line of doc that starts with
// word: a table's header, which the output must repeat.
func headerFields(doc, word string) string {
	for _, l := range strings.Split(doc, "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == word {
			return strings.Join(f, " ")
		}
	}
	return ""
}

// sameHeader checks that got has a line with the same words as the doc's
// header line starting with word.
func sameHeader(doc, got, word string) error {
	want := headerFields(doc, word)
	if want == "" {
		return fmt.Errorf("the document shows no line starting with %q", word)
	}
	for _, l := range strings.Split(got, "\n") {
		if strings.Join(strings.Fields(l), " ") == want {
			return nil
		}
	}
	return fmt.Errorf("no line %q", want)
}
