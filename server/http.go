package server

import (
	"log/slog"
	"net/http"
	"time"
)

// NewHTTPServer is the http.Server of the HTTP listener (/metrics and the
// dashboard), with every timeout set: a client that sends headers or a
// body slowly, or never reads its answer, holds a connection and
// (dashboard) a render slot only until its timeout. ReadTimeout matters
// most: net/http reads an unread request body after the handler starts
// answering, so a request that announces a body and sends none once held a
// render slot for good. WriteTimeout leaves room for a queued render
// (dashboard.Config.QueueWait) and the render itself. Errors from the
// server go to log at warn; nil discards them.
func NewHTTPServer(h http.Handler, log *slog.Logger) *http.Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      2 * time.Minute,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}
