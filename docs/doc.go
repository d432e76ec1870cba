// Package docs holds the project's guides and the tests that run them: the
// tutorial's commands and scripts are executed against a live demo so that
// a guide cannot drift from what the code does.
package docs
