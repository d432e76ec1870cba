package server

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync/atomic"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/auth"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// Role is what a caller may do.
type Role string

const (
	// RoleClient acquires, settles and renews its own leases, reports
	// throttles and reads reports.
	RoleClient Role = "client"
	// RoleAdmin may also change budgets: overrides and refreshes.
	RoleAdmin Role = "admin"
)

// Identity is who a caller is, as its credentials say.
type Identity struct {
	Client string
	Role   Role
}

type identityKey struct{}

func identityOf(ctx context.Context) (Identity, bool) {
	id, ok := ctx.Value(identityKey{}).(Identity)
	return id, ok
}

// Tokens maps bearer tokens, stored as SHA-256 hashes, to identities. The
// set can be swapped at run time (Reload) without dropping a call.
//
// File format (quota-broker token prints an entry for a new token):
//
//	{"tokens": [
//	  {"client": "checkout-svc", "role": "client", "sha256": "9f86d0..."},
//	  {"client": "ops",          "role": "admin",  "sha256": "60303a..."}
//	]}
//
// The file is read strictly, because a mistake in it either locks everyone
// out or hands a token to the wrong client: one JSON object and nothing
// after it, no unknown keys, client names as CheckClient allows, hashes of
// 64 hex digits compared in lower case (an upper-case copy of a hash is the
// same token, so a duplicate), no hash twice. An empty or missing token list
// is refused unless the file says "allow_empty": true, so that a truncated
// file or a bad template cannot lock every caller out by accident.
type Tokens struct {
	path string
	set  atomic.Pointer[map[string]Identity] // lower-case hex SHA-256 -> identity
}

type tokenEntry struct {
	Client string `json:"client"`
	Role   Role   `json:"role"`
	SHA256 string `json:"sha256"`
}

// LoadTokens reads the token file at path.
func LoadTokens(path string) (*Tokens, error) {
	t := &Tokens{path: path}
	if err := t.Reload(); err != nil {
		return nil, err
	}
	return t, nil
}

// Reload reads the file again; on error the tokens in force stay.
func (t *Tokens) Reload() error {
	data, err := os.ReadFile(t.path)
	if err != nil {
		return fmt.Errorf("tokens file: %w", err)
	}
	set, err := parseTokens(data)
	if err != nil {
		return fmt.Errorf("tokens file %s: %w", t.path, err)
	}
	t.set.Store(&set)
	return nil
}

func parseTokens(data []byte) (map[string]Identity, error) {
	var f *struct {
		Tokens     []tokenEntry `json:"tokens"`
		AllowEmpty bool         `json:"allow_empty"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("more after the JSON object: want exactly one object")
	}
	switch {
	case f == nil:
		return nil, errors.New(`is null: want {"tokens": [...]}`)
	case len(f.Tokens) == 0 && !f.AllowEmpty:
		return nil, errors.New(`no tokens: every call would be refused; add "allow_empty": true if that is what you want`)
	}
	set := make(map[string]Identity, len(f.Tokens))
	for i, e := range f.Tokens {
		if err := CheckClient(e.Client); err != nil {
			return nil, fmt.Errorf("tokens[%d].client %q: %w", i, e.Client, err)
		}
		if e.Role != RoleClient && e.Role != RoleAdmin {
			return nil, fmt.Errorf("tokens[%d].role: %q is not client or admin", i, e.Role)
		}
		h, err := hex.DecodeString(e.SHA256)
		if err != nil || len(h) != sha256.Size {
			return nil, fmt.Errorf("tokens[%d].sha256: want the 64 hex digits of a token's SHA-256 (quota-broker token prints it)", i)
		}
		key := hex.EncodeToString(h) // canonical: lower case
		if prev, dup := set[key]; dup {
			return nil, fmt.Errorf("tokens[%d]: the same token as an earlier entry (client %q)", i, prev.Client)
		}
		set[key] = Identity{Client: e.Client, Role: e.Role}
	}
	return set, nil
}

// Len is the number of tokens in force.
func (t *Tokens) Len() int { return len(*t.set.Load()) }

// lookup returns the identity of a bearer token.
func (t *Tokens) lookup(token string) (Identity, bool) {
	sum := sha256.Sum256([]byte(token))
	id, ok := (*t.set.Load())[hex.EncodeToString(sum[:])]
	return id, ok
}

var (
	errBadToken    = status.Error(codes.Unauthenticated, "missing or invalid bearer token")
	errCredsDiffer = status.Error(codes.Unauthenticated, "bearer token and client certificate name different clients")
)

// authenticator establishes who a call comes from, with bearer tokens,
// client certificates, or both. The answer never says which part was wrong.
//
// With mutual TLS the verified client certificate is enough. A bearer token
// sent as well must be valid and name the same client as the certificate,
// or the call is refused: two credentials that disagree are a
// misconfiguration (a sidecar holding another service's token) or a theft,
// and either way accounting must not silently follow one of them. When they
// agree, the caller is admin if either grants it.
type authenticator struct {
	tokens *Tokens // nil: no bearer tokens accepted
	tls    *TLS    // nil or not mutual: no client certificates
}

func (a authenticator) identify(ctx context.Context) (Identity, error) {
	var fromToken *Identity
	if md, _ := metadata.FromIncomingContext(ctx); len(md.Get("authorization")) > 0 || !a.tls.Mutual() {
		token, err := auth.AuthFromMD(ctx, "bearer")
		if err != nil || a.tokens == nil {
			return Identity{}, errBadToken
		}
		id, ok := a.tokens.lookup(token)
		if !ok {
			return Identity{}, errBadToken
		}
		fromToken = &id
	}
	if !a.tls.Mutual() {
		return *fromToken, nil
	}
	id, err := a.tls.peerIdentity(ctx)
	if err != nil {
		return Identity{}, err
	}
	if fromToken != nil {
		if fromToken.Client != id.Client {
			return Identity{}, errCredsDiffer
		}
		if fromToken.Role == RoleAdmin {
			id.Role = RoleAdmin
		}
	}
	return id, nil
}

// NewToken returns a new random bearer token and the hex SHA-256 to put in
// the tokens file.
func NewToken() (token, sha string) {
	var p [32]byte
	rand.Read(p[:]) // never fails (crypto/rand since Go 1.24)
	token = "qb_" + hex.EncodeToString(p[:])
	sum := sha256.Sum256([]byte(token))
	return token, hex.EncodeToString(sum[:])
}

var errPermission = status.Error(codes.PermissionDenied, "permission denied")

// requireAdmin fails a call that needs the admin role. Without
// authentication configured every caller is trusted (the broker then
// listens on loopback only, unless told otherwise).
func (s *Server) requireAdmin(ctx context.Context) error {
	if !s.cfg.authenticates() {
		return nil
	}
	if id, ok := identityOf(ctx); ok && id.Role == RoleAdmin {
		return nil
	}
	return errPermission
}

// requireOwner fails a call on a lease of another client. Lease ids are
// unguessable, so a foreign id is evidence of a bug or of a leak; either way
// the caller learns nothing more than "permission denied".
func (s *Server) requireOwner(ctx context.Context, leaseID string) error {
	owner := s.leases.LeaseClient(leaseID)
	if owner == "" { // unknown: let the domain say not found
		return nil
	}
	if owner != clientOf(ctx) {
		return errPermission
	}
	return nil
}
