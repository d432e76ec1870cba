// Package jsonpos gives errors about a JSON file the file's name, the line
// they are about and, where the decoder knows it, the field: the format every
// operator-edited file of the broker (budgets, prices, client policies)
// reports in, "name:line: field: what is wrong".
//
// It imports the standard library only, so the file parsers, which are the
// domain's standard-library leaves, can share it.
package jsonpos

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
)

// File is a JSON document being parsed: its name for errors and its bytes,
// which offsets point into.
type File struct {
	Name string
	Data []byte
}

// Line is the 1-based line of offset, clamped to the document.
func (f File) Line(offset int64) int {
	offset = min(max(offset, 0), int64(len(f.Data)))
	return 1 + bytes.Count(f.Data[:offset], []byte("\n"))
}

// Errorf is an error at offset: "name:line: " and the message.
func (f File) Errorf(offset int64, format string, args ...any) error {
	return fmt.Errorf("%s:%d: %s", f.Name, f.Line(offset), fmt.Sprintf(format, args...))
}

// DecodeErr turns err, from decoding the value of field that starts at
// offset at, into an error on the line it is about: a syntax error where the
// decoder stopped, a wrong type at its field ("field.sub: want T, got JSON
// kind"), the end of the file for a truncated one, and an unknown field at
// at.
func (f File) DecodeErr(err error, at int64, field string) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return f.Errorf(syn.Offset, "invalid JSON: %v", syn)
	case errors.As(err, &typ):
		fl := field
		if typ.Field != "" {
			fl += "." + typ.Field
		}
		return f.Errorf(typ.Offset, "%s: want %s, got JSON %s", strings.TrimPrefix(fl, "."), typ.Type, typ.Value)
	case errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF):
		return f.Errorf(int64(len(f.Data)), "unexpected end of file")
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return f.Errorf(at, "%s: %s", field, strings.TrimPrefix(err.Error(), "json: "))
	}
	return f.Errorf(at, "%s: %v", field, err)
}

// Skip moves offset past whitespace and commas, so that an error's line is
// that of the key or entry it is about, not the end of the one before.
func (f File) Skip(offset int64) int64 {
	for offset < int64(len(f.Data)) && strings.ContainsRune(" \t\r\n,", rune(f.Data[offset])) {
		offset++
	}
	return offset
}
