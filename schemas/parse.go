package schemas

import (
	"errors"

	sjson "github.com/segmentio/encoding/json"
)

// parseJSON parses data, which must hold exactly one JSON value (with
// optional white space around it), into the values the jsonschema library
// validates: map[string]any, []any, string, json.Number, bool and nil.
//
// It returns what encoding/json's Decoder with UseNumber returns
// (jsonschema.UnmarshalJSON, which it replaces on the hot path; the fuzz
// test holds the two to the same results), through Segment's
// github.com/segmentio/encoding/json: a maintained drop-in for
// encoding/json that parses a batch in about three quarters of the time.
// JSON parsing is not shardflow's business, so a library does it.
//
// Its errors say only that data is not well-formed: callers get the offset
// and message of the failure from encoding/json, on that cold path.
func parseJSON(data []byte) (any, error) {
	if !withinDepth(data) {
		return nil, errMalformed
	}
	var v any
	rest, err := sjson.Parse(data, &v, sjson.UseNumber)
	if err != nil {
		return nil, errMalformed
	}
	for _, c := range rest {
		switch c {
		case ' ', '\t', '\n', '\r':
		default:
			return nil, errMalformed // a second value, or garbage, after the first
		}
	}
	return v, nil
}

var errMalformed = errors.New("malformed JSON")

// maxDepth is encoding/json's nesting limit: that many arrays and objects
// may be open at once, one more is an error. The library has none, and a
// body of nothing but brackets would cost a recursion as deep as the body
// is long, in the parser and again in the validator.
const maxDepth = 10000

// withinDepth reports whether data never has more than maxDepth arrays and
// objects open at once, counting brackets outside strings only. (On
// malformed input its answer does not matter: the parser refuses it.)
func withinDepth(data []byte) bool {
	depth, inString := 0, false
	for i := 0; i < len(data); i++ {
		c := data[i]
		if inString {
			switch c {
			case '\\':
				i++ // the escaped byte cannot end the string
			case '"':
				inString = false
			}
			continue
		}
		switch c {
		case '"':
			inString = true
		case '[', '{':
			if depth++; depth > maxDepth {
				return false
			}
		case ']', '}':
			depth--
		}
	}
	return true
}
