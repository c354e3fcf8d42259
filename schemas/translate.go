package schemas

import (
	"cmp"
	"encoding/json"
	"fmt"
	"math/big"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/santhosh-tekuri/jsonschema/v6/kind"
)

// Locations and patterns in the schema documents that get a hand-written
// message. Tests make sure they stay in sync with the files.
const (
	identityRule      = BaseURL + EventSchema + "#" // its anyOf: userId or anonymousId
	messageIDPattern  = `^[^\x00-\x1F\x7F-\x9F]+$`
	deadLetterPattern = `^.+:[1-9][0-9]*$`
)

// maxEcho bounds how much of a client's value is quoted back in a message.
const maxEcho = 64

// fieldErr is a FieldError with the key it sorts by.
type fieldErr struct {
	FieldError
	sortKey string
}

// translator turns the error trees of the jsonschema library into flat,
// readable FieldErrors with dotted paths.
type translator struct {
	inst   any      // the whole instance, to tell arrays from objects
	prefix []string // location of the validated value within inst
	out    []fieldErr
}

// newValidationError converts err, returned by validating inst, into a
// *ValidationError. Errors of any other type are returned wrapped.
func newValidationError(err error, inst any) error {
	t := translator{inst: inst}
	if err := t.collect(err, nil); err != nil {
		return err
	}
	return t.result()
}

// collect adds the violations of err, returned by validating the value at
// prefix. Errors of any other type are returned wrapped.
func (t *translator) collect(err error, prefix []string) error {
	ve, ok := err.(*jsonschema.ValidationError)
	if !ok {
		return fmt.Errorf("schemas: validate: %w", err)
	}
	t.prefix = prefix
	t.walk(ve)
	t.prefix = nil
	return nil
}

func (t *translator) result() *ValidationError {
	slices.SortFunc(t.out, func(a, b fieldErr) int {
		return cmp.Or(cmp.Compare(a.sortKey, b.sortKey), cmp.Compare(a.Message, b.Message))
	})
	t.out = slices.CompactFunc(t.out, func(a, b fieldErr) bool { return a.FieldError == b.FieldError })
	fields := make([]FieldError, len(t.out))
	for i, f := range t.out {
		fields[i] = f.FieldError
	}
	return &ValidationError{Fields: fields}
}

func (t *translator) add(loc []string, prop, msg string) {
	if len(t.prefix) > 0 {
		loc = append(slices.Clip(t.prefix), loc...)
	}
	field, key := fieldPath(t.inst, loc, prop)
	t.out = append(t.out, fieldErr{FieldError{field, msg}, key})
}

func (t *translator) walk(e *jsonschema.ValidationError) {
	loc := e.InstanceLocation
	switch k := e.ErrorKind.(type) {
	case *kind.AnyOf:
		if e.SchemaURL == identityRule {
			t.add(loc, "userId", "userId or anonymousId is required")
		} else {
			t.add(loc, "", "does not match any of the allowed forms")
		}
		return
	case *kind.OneOf:
		if len(k.Subschemas) == 0 {
			t.add(loc, "", "does not match any of the allowed forms")
		} else {
			t.add(loc, "", "matches more than one of the allowed forms")
		}
		return
	}
	if len(e.Causes) > 0 {
		for _, c := range e.Causes {
			t.walk(c)
		}
		return
	}
	switch k := e.ErrorKind.(type) {
	case *kind.Required:
		for _, p := range k.Missing {
			t.add(loc, p, "is required")
		}
	case *kind.AdditionalProperties:
		for _, p := range k.Properties {
			t.add(loc, p, "is not allowed")
		}
	case *kind.DependentRequired:
		for _, p := range k.Missing {
			t.add(loc, p, fmt.Sprintf("is required when %s is present", k.Prop))
		}
	default:
		t.add(loc, "", leafMessage(e))
	}
}

// leafMessage describes a violation without causes.
func leafMessage(e *jsonschema.ValidationError) string {
	switch k := e.ErrorKind.(type) {
	case *kind.Type:
		want := make([]string, len(k.Want))
		for i, w := range k.Want {
			want[i] = typeName(w)
		}
		return fmt.Sprintf("must be %s, got %s", strings.Join(want, " or "), typeName(k.Got))
	case *kind.Enum:
		if isEventTypeEnum(k.Want) {
			if s, ok := k.Got.(string); ok {
				return unknownTypeMessage(s)
			}
		}
		want := make([]string, len(k.Want))
		for i, w := range k.Want {
			want[i] = echo(w)
		}
		return fmt.Sprintf("must be one of %s, got %s", strings.Join(want, ", "), echo(k.Got))
	case *kind.Const:
		return fmt.Sprintf("must be %s, got %s", echo(k.Want), echo(k.Got))
	case *kind.Format:
		switch k.Want {
		case "date-time":
			return fmt.Sprintf(`must be an RFC 3339 date-time such as "2006-01-02T15:04:05Z", got %s`, echo(k.Got))
		case "uri":
			return fmt.Sprintf("must be an absolute URI, got %s", echo(k.Got))
		}
		return fmt.Sprintf("must be a valid %s, got %s", k.Want, echo(k.Got))
	case *kind.MinLength:
		if k.Want == 1 {
			return "must not be empty"
		}
		return fmt.Sprintf("must be at least %d characters long, got %d", k.Want, k.Got)
	case *kind.MaxLength:
		return fmt.Sprintf("must be at most %d characters long, got %d", k.Want, k.Got)
	case *kind.Pattern:
		switch k.Want {
		case messageIDPattern:
			return "must not contain control characters"
		case deadLetterPattern:
			return fmt.Sprintf(`must have the form "<originStream>:<originSeq>", got %s`, echo(k.Got))
		}
		return fmt.Sprintf("must match the pattern %s, got %s", strconv.Quote(k.Want), echo(k.Got))
	case *kind.MinItems:
		if k.Want == 1 {
			return "must not be empty"
		}
		return fmt.Sprintf("must have at least %d items, got %d", k.Want, k.Got)
	case *kind.MaxItems:
		return fmt.Sprintf("must have at most %d items, got %d", k.Want, k.Got)
	case *kind.Minimum:
		return fmt.Sprintf("must be at least %s, got %s", ratString(k.Want), ratString(k.Got))
	case *kind.Maximum:
		return fmt.Sprintf("must be at most %s, got %s", ratString(k.Want), ratString(k.Got))
	case *kind.ExclusiveMinimum:
		return fmt.Sprintf("must be greater than %s, got %s", ratString(k.Want), ratString(k.Got))
	case *kind.ExclusiveMaximum:
		return fmt.Sprintf("must be less than %s, got %s", ratString(k.Want), ratString(k.Got))
	case *kind.MultipleOf:
		return fmt.Sprintf("must be a multiple of %s, got %s", ratString(k.Want), ratString(k.Got))
	case *kind.ContentEncoding:
		return fmt.Sprintf("must be %s-encoded", k.Want)
	case *kind.FalseSchema:
		return "is not allowed"
	}
	// Anything else: the library's own wording, without its location prefix.
	leaf := &jsonschema.ValidationError{SchemaURL: e.SchemaURL, ErrorKind: e.ErrorKind}
	return strings.TrimPrefix(leaf.Error(), "at '': ")
}

// unknownTypeMessage is the message for an event type other than identify
// and track.
func unknownTypeMessage(typ string) string {
	return fmt.Sprintf("unknown event type %s (supported: %s, %s)", echo(typ), TypeIdentify, TypeTrack)
}

func isEventTypeEnum(want []any) bool {
	return len(want) == 2 && want[0] == TypeIdentify && want[1] == TypeTrack
}

func typeName(t string) string {
	switch t {
	case "object", "array", "integer":
		return "an " + t
	case "string", "number", "boolean":
		return "a " + t
	}
	return t // null
}

// echo renders a JSON value of the client for a message: strings quoted
// and shortened, numbers and literals as is, containers by kind.
func echo(v any) string {
	switch v := v.(type) {
	case string:
		if utf8.RuneCountInString(v) > maxEcho {
			r := []rune(v)
			return strconv.Quote(string(r[:maxEcho])) + "…"
		}
		return strconv.Quote(v)
	case json.Number:
		s := v.String()
		if len(s) > maxEcho {
			return s[:maxEcho] + "…"
		}
		return s
	case nil:
		return "null"
	case bool:
		return strconv.FormatBool(v)
	case map[string]any:
		return "an object"
	case []any:
		return "an array"
	}
	return fmt.Sprint(v)
}

func ratString(r *big.Rat) string {
	if r == nil {
		return "?"
	}
	if r.IsInt() {
		return r.Num().String()
	}
	f, _ := r.Float64()
	return strconv.FormatFloat(f, 'g', -1, 64)
}

// fieldPath converts a JSON-pointer instance location (plus an optional
// property below it) into a dotted path such as "batch[3].event", and a
// key that sorts array indices numerically. inst is walked alongside so
// that numeric tokens are only rendered as indices inside arrays.
func fieldPath(inst any, loc []string, prop string) (field, sortKey string) {
	var f, k strings.Builder
	cur := inst
	step := func(tok string) {
		if arr, ok := cur.([]any); ok {
			if i, err := strconv.Atoi(tok); err == nil && i >= 0 && i < len(arr) {
				fmt.Fprintf(&f, "[%d]", i)
				fmt.Fprintf(&k, "[%010d]", i)
				cur = arr[i]
				return
			}
		}
		if obj, ok := cur.(map[string]any); ok {
			cur = obj[tok]
		} else {
			cur = nil
		}
		var s string
		switch {
		case !isIdentifier(tok):
			s = "[" + strconv.Quote(tok) + "]"
		case f.Len() == 0:
			s = tok
		default:
			s = "." + tok
		}
		f.WriteString(s)
		k.WriteString(s)
	}
	for _, tok := range loc {
		step(tok)
	}
	if prop != "" {
		step(prop)
	}
	return f.String(), k.String()
}

// isIdentifier reports whether a property name can be written after a dot.
func isIdentifier(s string) bool {
	if s == "" {
		return false
	}
	for i, r := range s {
		switch {
		case r == '_' || r == '$' || ('a' <= r && r <= 'z') || ('A' <= r && r <= 'Z'):
		case i > 0 && (('0' <= r && r <= '9') || r == '-'):
		default:
			return false
		}
	}
	return true
}
