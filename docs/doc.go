// Package docs is the project's documentation; its tests run every command
// the documents show.
//
// The documents are README.md, BENCHMARKS.md, docs/*.md and clients/*/README.md.
// A command is a line of a ```sh block (backslash continuations and lines
// inside an open quote joined, a trailing `# comment` dropped) or a line
// starting with `$ ` in an untagged block, whose remaining lines are its
// output. The tests hold two promises:
//
//   - Coverage: every command of every document is claimed by a scene, or
//     is in a short list with the reason it cannot run in a test. A command
//     added to a document without a scene fails the test, which says how to
//     add one.
//   - Scenes: a scene runs its commands for real, through bash, against
//     freshly built quota-broker and bedrock-sim binaries listening on free
//     loopback ports (the documented ports 50051, 8566 and 9464 are rewritten
//     to them), and checks what they print against the output the document
//     shows where it shows one: its structure (JSON keys, table headers, first
//     words), never volatile numbers.
//
// The scenes run the text of the documents, not a copy of it: a command
// edited in a document is what the next test run executes. Nothing in this
// package is exported; docs/tutorial.md has its own runner that reuses the
// extraction and run helpers of docs_test.go.
package docs
