package docs

// Scenes: the machinery that ties the documents' commands to the code that
// runs them. The scenes themselves are in scenes_test.go.

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// claim names one command of a document: match is the command's key
// (white space collapsed), or its beginning followed by "..." (for long
// commands). A claim must name exactly one command of its file.
type claim struct{ file, match string }

func (c claim) matches(cmd command) bool {
	if cmd.file != c.file {
		return false
	}
	if prefix, ok := strings.CutSuffix(c.match, "..."); ok {
		return strings.HasPrefix(cmd.key, prefix)
	}
	return cmd.key == c.match
}

// scene runs some documents' commands for real. claims lists them all;
// run must run every one (the test fails otherwise), so the list is what
// the scene does.
type scene struct {
	name   string
	claims []claim
	run    func(s *sceneRun)
}

// notRun are the commands no test runs, each with the reason. Keep it short:
// a command against AWS runs against the simulator (the endpoint variables),
// a long campaign runs until its first lines.
type notRun struct {
	claim
	why string
}

// sceneRun is one scene running: its world and the commands it claimed.
type sceneRun struct {
	*world
	scene *scene
	cmds  map[claim]command
	mu    sync.Mutex
	ran   map[claim]bool
}

// cmd returns the command the scene claimed as (file, match) and marks it run.
func (s *sceneRun) cmd(file, match string) command {
	s.t.Helper()
	c, ok := s.cmds[claim{file, match}]
	if !ok {
		s.t.Fatalf("scene %q runs %s %q without claiming it: add it to the scene's claims", s.scene.name, file, match)
	}
	s.mu.Lock()
	s.ran[claim{file, match}] = true
	s.mu.Unlock()
	return c
}

// run runs a claimed command to its end and fails the scene unless it
// exits 0.
func (s *sceneRun) run(file, match string, timeout time.Duration) (command, result) {
	s.t.Helper()
	c := s.cmd(file, match)
	r := s.bash(s.rewrite(c.text), timeout)
	if r.err != nil {
		s.t.Fatalf("%s\nran: %s\n%v\nstdout:\n%s\nstderr:\n%s", c, s.rewrite(c.text), r.err, r.stdout, r.stderr)
	}
	return c, r
}

// fails runs a claimed command that the document says fails, and returns
// what it printed; it fails the scene if the command succeeds.
func (s *sceneRun) fails(file, match string, timeout time.Duration) (command, result) {
	s.t.Helper()
	c := s.cmd(file, match)
	r := s.bash(s.rewrite(c.text), timeout)
	if r.err == nil {
		s.t.Fatalf("%s\nran: %s\nsucceeded; the document says it fails\nstdout:\n%s\nstderr:\n%s", c, s.rewrite(c.text), r.stdout, r.stderr)
	}
	return c, r
}

// serve starts a claimed command that serves until stopped and waits until
// it listens on addr; the scene's end stops it.
func (s *sceneRun) serve(file, match, addr string) *process {
	s.t.Helper()
	c := s.cmd(file, match)
	p := s.start(s.rewrite(c.text))
	s.waitListening(p, addr, 2*time.Minute)
	return p
}

// firstLines starts a claimed long campaign, waits for a line matching
// until, stops the campaign and returns what it printed.
func (s *sceneRun) firstLines(file, match string, until *regexp.Regexp, timeout time.Duration) (command, string) {
	s.t.Helper()
	c := s.cmd(file, match)
	p := s.start(s.rewrite(c.text))
	s.waitOutput(p, until, timeout)
	return c, p.stop()
}

// check fails the scene with the command and both outputs when err is not nil.
func (s *sceneRun) check(c command, got string, err error) {
	s.t.Helper()
	if err != nil {
		s.t.Errorf("%s: the output does not match the document's: %v\ndocument:\n%s\ngot:\n%s", c, err, c.output, got)
	}
}

// write puts a file in the scene's working directory.
func (s *sceneRun) write(name, content string) string {
	s.t.Helper()
	p := filepath.Join(s.dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		s.t.Fatal(err)
	}
	return p
}

// copyFile copies a repository file into the scene's working directory.
func (s *sceneRun) copyFile(from, to string) {
	s.t.Helper()
	b, err := os.ReadFile(filepath.Join(s.root, from))
	if err != nil {
		s.t.Fatal(err)
	}
	s.write(to, string(b))
}

// resolve finds, for each claim, the one command it names; errs lists
// claims that name none or several.
func resolve(cmds []command, claims []claim) (map[claim]command, []string) {
	found := map[claim]command{}
	var errs []string
	for _, cl := range claims {
		var hits []command
		for _, c := range cmds {
			if cl.matches(c) {
				hits = append(hits, c)
			}
		}
		switch len(hits) {
		case 1:
			found[cl] = hits[0]
		case 0:
			errs = append(errs, fmt.Sprintf("%s %q names no command of the document (was it changed? claim its new text)", cl.file, cl.match))
		default:
			var where []string
			for _, h := range hits {
				where = append(where, fmt.Sprintf("line %d", h.line))
			}
			errs = append(errs, fmt.Sprintf("%s %q names %d commands (%s): make it longer", cl.file, cl.match, len(hits), strings.Join(where, ", ")))
		}
	}
	return found, errs
}

// checkCoverage fails t for every command that no scene and no notRun
// entry claims, for claims that name no command or several, and for
// commands claimed twice.
func checkCoverage(t *testing.T, cmds []command, scenes []*scene, skipped []notRun) {
	claimedBy := map[string][]string{} // command -> who claims it
	for _, sc := range scenes {
		found, errs := resolve(cmds, sc.claims)
		for _, e := range errs {
			t.Errorf("scene %q: %s", sc.name, e)
		}
		for _, c := range found {
			claimedBy[c.String()] = append(claimedBy[c.String()], "scene "+sc.name)
		}
	}
	for _, n := range skipped {
		found, errs := resolve(cmds, []claim{n.claim})
		for _, e := range errs {
			t.Errorf("not run: %s", e)
		}
		for _, c := range found {
			claimedBy[c.String()] = append(claimedBy[c.String()], "the not-run list")
		}
		if strings.TrimSpace(n.why) == "" {
			t.Errorf("not run: %s %q has no reason", n.file, n.match)
		}
	}
	for _, c := range cmds {
		by := claimedBy[c.String()]
		switch {
		case len(by) == 0:
			t.Errorf("%s\n\tno scene runs this command. Add claim{%q, %q} to the claims of the scene that sets up what it needs "+
				"(docs/scenes_test.go) and run it there with s.run / s.serve / s.firstLines, checking its output against the "+
				"document's; or, if it cannot run in a test at all, add it to notRunHere with the precise reason",
				c, c.file, c.key)
		case len(by) > 1:
			t.Errorf("%s\n\tclaimed more than once: %s", c, strings.Join(by, ", "))
		}
	}
}

// runScene runs one scene in a world of its own and checks it ran every
// command it claimed.
func runScene(t *testing.T, cmds []command, sc *scene) {
	found, errs := resolve(cmds, sc.claims)
	if len(errs) > 0 {
		t.Fatalf("scene %q: %s", sc.name, strings.Join(errs, "; "))
	}
	s := &sceneRun{world: newWorld(t), scene: sc, cmds: found, ran: map[claim]bool{}}
	sc.run(s)
	if t.Failed() || t.Skipped() {
		return
	}
	var missed []string
	for _, cl := range sc.claims {
		if !s.ran[cl] {
			missed = append(missed, fmt.Sprintf("%s %q", cl.file, cl.match))
		}
	}
	slices.Sort(missed)
	if len(missed) > 0 {
		t.Errorf("scene %q claims commands it did not run: %s", sc.name, strings.Join(missed, ", "))
	}
}

// Output shapes.

var number = regexp.MustCompile(`[0-9][0-9.,:]*(µs|ms|s|m|h|%)?`)

// skeleton is a line with every number (with its unit) replaced by #.
func skeleton(l string) string {
	return strings.Join(strings.Fields(number.ReplaceAllString(l, "#")), " ")
}

// sameSkeleton checks that each of the doc's lines for which keep is true
// appears in got, in order, once numbers are masked: the same words around
// different figures.
func sameSkeleton(doc, got string, keep func(line string) bool) error {
	gl := strings.Split(got, "\n")
	i := 0
	for _, l := range strings.Split(doc, "\n") {
		if strings.TrimSpace(l) == "" || (keep != nil && !keep(l)) {
			continue
		}
		want := skeleton(l)
		for ; i < len(gl) && skeleton(gl[i]) != want; i++ {
		}
		if i == len(gl) {
			return fmt.Errorf("no line like %q (numbers masked: %q) after the lines matched before it", l, want)
		}
		i++
	}
	return nil
}
