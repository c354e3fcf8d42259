package schemas

import (
	"fmt"
	"strings"
)

// SyntaxError reports a body that is not well-formed JSON, or whose
// top-level value is not an object. For malformed JSON, Offset is the
// number of bytes read before the problem was detected (as in
// encoding/json, so the offending byte is the Offset-th); for a value that
// is not an object, it is where that value starts.
type SyntaxError struct {
	Offset int64
	Msg    string

	err error // underlying encoding/json error, if any
}

func (e *SyntaxError) Error() string {
	return fmt.Sprintf("malformed JSON at byte %d: %s", e.Offset, e.Msg)
}

// Unwrap returns the underlying *encoding/json.SyntaxError, if any.
func (e *SyntaxError) Unwrap() error { return e.err }

// FieldError is one schema violation. Field is a dotted path into the
// request body, with array indices in brackets ("batch[3].event",
// "userId", "context.library"); it is empty when the violation concerns the
// body as a whole. Message names the rule that was broken and is meant to
// be shown to API users.
type FieldError struct {
	Field   string
	Message string
}

func (f FieldError) String() string {
	if f.Field == "" {
		return f.Message
	}
	return f.Field + ": " + f.Message
}

// ValidationError reports a body that is well-formed JSON but breaks its
// schema. Fields holds every violation found, ordered by field path.
type ValidationError struct {
	Fields []FieldError
}

// maxErrorFields bounds how many field errors Error() spells out.
const maxErrorFields = 20

func (e *ValidationError) Error() string {
	if len(e.Fields) == 0 {
		return "invalid message"
	}
	var b strings.Builder
	for i, f := range e.Fields {
		if i == maxErrorFields {
			fmt.Fprintf(&b, "; and %d more", len(e.Fields)-i)
			break
		}
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(f.String())
	}
	return b.String()
}

// LimitError reports a body, or an event inside a batch, larger than the
// configured [Limits]. Field is "body" for the whole request body, or
// "batch[i]" for the i-th event of a batch. Size and Limit are in bytes.
type LimitError struct {
	Field string
	Size  int
	Limit int
}

func (e *LimitError) Error() string {
	what := "event"
	if e.Field == "body" {
		what = "request body"
	}
	return fmt.Sprintf("%s: %s is %d bytes, over the limit of %d bytes", e.Field, what, e.Size, e.Limit)
}
