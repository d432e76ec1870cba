package jsonpos

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func decode(data string, v any) error {
	dec := json.NewDecoder(bytes.NewReader([]byte(data)))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

// TestDecodeErrNamesLineAndField: each kind of decoding error lands on the
// line it is about, with the field where the decoder knows it.
func TestDecodeErrNamesLineAndField(t *testing.T) {
	type entry struct {
		RPM int `json:"rpm"`
	}
	type doc struct {
		Budgets []entry `json:"budgets"`
	}
	for _, tc := range []struct {
		name, data, field string
		into              any
		want              string
	}{
		{"syntax", "{\n\"budgets\": [\n{\"rpm\": 1,,}]}", "", &doc{}, "f.json:3: invalid JSON: "},
		{"type", "\n\n{\"rpm\": \"many\"}", "budgets[0]", &entry{}, "f.json:3: budgets[0].rpm: want int, got JSON string"},
		{"type at the top", "{\"budgets\":\n 7}", "", &doc{}, "f.json:2: budgets: want []jsonpos.entry, got JSON number"},
		{"truncated", "{\n\"budgets\": [\n", "", &doc{}, "f.json:3: unexpected end of file"},
		{"unknown", "{\n\"budgets\": [],\n\"extra\": 1}", "budgets", &doc{}, "f.json:1: budgets: unknown field \"extra\""},
	} {
		f := File{Name: "f.json", Data: []byte(tc.data)}
		err := decode(tc.data, tc.into)
		if err == nil {
			t.Fatalf("%s: decoded without error", tc.name)
		}
		if got := f.DecodeErr(err, 0, tc.field).Error(); !strings.HasPrefix(got, tc.want) {
			t.Errorf("%s: %q, want prefix %q", tc.name, got, tc.want)
		}
	}
}

func TestLineAndSkip(t *testing.T) {
	f := File{Name: "f", Data: []byte("a\nb\n , \n c")}
	for _, tc := range []struct {
		offset int64
		line   int
	}{{-5, 1}, {0, 1}, {2, 2}, {4, 3}, {100, 4}} {
		if got := f.Line(tc.offset); got != tc.line {
			t.Errorf("Line(%d) = %d, want %d", tc.offset, got, tc.line)
		}
	}
	if at := f.Skip(3); f.Data[at] != 'c' || f.Line(at) != 4 {
		t.Errorf("Skip(3) = %d (%q), want the offset of c on line 4", at, f.Data[at])
	}
	if at := f.Skip(int64(len(f.Data))); at != int64(len(f.Data)) {
		t.Errorf("Skip at the end moved to %d", at)
	}
}
