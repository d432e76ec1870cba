package server

import (
	"context"

	"github.com/bedrockqb/quotabroker/broker"
)

// OtherClients is the client of the top_clients entry that sums, for a
// caller who may not see them by name, the other clients ranked with it.
// CheckClient refuses the name, so no real client can have it.
const OtherClients = "<other clients>"

// seesEveryClient reports whether the caller may see other clients by name
// in reports: admins may, and so may every caller when the server does not
// authenticate (names are then self-declared and every caller is trusted).
func (s *Server) seesEveryClient(ctx context.Context) bool {
	if !s.cfg.authenticates() {
		return true
	}
	id, ok := identityOf(ctx)
	return ok && id.Role == RoleAdmin
}

// ownView is a as a client other than an admin sees it: its own entry in
// the top clients, if it ranks, and the other ranked clients summed into
// one OtherClients entry. Budget totals are not per client and stay.
// Another tenant's name says who shares the account and its usage how
// much they spend: neither is a client's business, while the sum still
// tells it how much of the budget is not its own.
func ownView(a *broker.Activity, client string) *broker.Activity {
	if a == nil {
		return nil
	}
	out := *a
	out.TopClients = nil
	var others broker.Stats
	n := 0
	for i := range a.TopClients {
		c := &a.TopClients[i]
		if c.Client == client {
			out.TopClients = append(out.TopClients, *c)
			continue
		}
		others.Add(&c.Stats)
		n++
	}
	if n > 0 {
		out.TopClients = append(out.TopClients, broker.ClientStats{Client: OtherClients, Stats: others})
	}
	return &out
}
