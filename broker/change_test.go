package broker

import (
	"reflect"
	"testing"
	"time"
)

// fullChange sets every field of Change. TestChangeFields fails while a
// field is left zero here, so a new field must be added here, and then the
// test checks that empty and merge handle it.
func fullChange() Change {
	k := Key{Region: "us-east-1", Scope: ScopeOnDemand, Model: "m"}
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	tpm := int64(7)
	return Change{
		Specs:                   []Spec{{Key: k, Quota: Limits{TPM: 100}}},
		Overrides:               []OverrideRecord{{Key: k, Override: &Override{TPM: &tpm, SetAt: t0}}},
		Leases:                  []LeaseRecord{{ID: "l1", Version: 1, Key: k, State: LeaseActive, GrantedAt: t0}},
		DeleteLeases:            []string{"l0"},
		Usage:                   []UsageRecord{{Key: k, Minute: 5, Tokens: 1, Requests: 1}},
		DeleteUsageBefore:       2,
		Adaptive:                []AdaptiveRecord{{Key: k, TokensWmax: 1}},
		Stats:                   []StatsRecord{{Key: k, Minute: 5, Client: "c", Stats: Stats{Granted: 1}}},
		DeleteStatsBefore:       3,
		DeleteClientStatsBefore: 4,
		Chunks:                  []ChunkRecord{{ID: 9, Key: k, Start: t0, End: t0.Add(time.Second), Requests: 4, Tokens: 40}},
		DeleteChunks:            []uint64{8},
		Spend:                   []SpendRecord{{Client: "c", Key: k, Day: 20000, NanoUSD: 5, Calls: 1}},
		ClientUsage:             []ClientUsageRecord{{Client: "c", Key: k, Minute: 5, Tokens: 1, Requests: 1}},
		DeleteSpendBefore:       19000,
		DeleteClientUsageBefore: 6,
	}
}

// TestChangeFields checks, field by field, that a Change holding only that
// field is not empty and that merge carries it: slices are appended, and of
// two cut-offs the later is kept.
func TestChangeFields(t *testing.T) {
	t.Parallel()
	if c := (Change{}); !c.empty() {
		t.Error("the zero Change is not empty")
	}
	full := reflect.ValueOf(fullChange())
	for i := range full.NumField() {
		name, v := full.Type().Field(i).Name, full.Field(i)
		if v.IsZero() {
			t.Errorf("fullChange leaves %s zero: set it, so that this test covers it", name)
			continue
		}
		var one Change
		reflect.ValueOf(&one).Elem().Field(i).Set(v)
		if one.empty() {
			t.Errorf("a Change with only %s set is empty: empty ignores it", name)
		}
		var m Change
		m.merge(one)
		if !reflect.DeepEqual(m, one) {
			t.Errorf("merged into a zero Change, a Change with only %s gives %+v", name, m)
		}
		m.merge(one)
		got := reflect.ValueOf(m).Field(i)
		switch v.Kind() {
		case reflect.Slice:
			if got.Len() != 2*v.Len() {
				t.Errorf("%s: merging twice holds %d records, want %d", name, got.Len(), 2*v.Len())
			}
		case reflect.Int64:
			later := one
			reflect.ValueOf(&later).Elem().Field(i).SetInt(v.Int() + 10)
			m.merge(later)
			if got := reflect.ValueOf(m).Field(i).Int(); got != v.Int()+10 {
				t.Errorf("%s: merging cut-offs %d and %d kept %d, want the later", name, v.Int(), v.Int()+10, got)
			}
			m.merge(one)
			if got := reflect.ValueOf(m).Field(i).Int(); got != v.Int()+10 {
				t.Errorf("%s: merging an earlier cut-off %d moved it back to %d", name, v.Int(), got)
			}
		default:
			t.Errorf("%s is a %s: teach merge and this test how to combine it", name, v.Kind())
		}
	}
}
