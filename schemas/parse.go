package schemas

import (
	"encoding/json"
	"errors"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
)

// parseJSON parses data, which must hold exactly one JSON value (with
// optional white space around it), into the values the jsonschema library
// validates: map[string]any, []any, string, json.Number, bool and nil.
//
// It accepts exactly what encoding/json accepts and returns exactly what
// encoding/json's Decoder with UseNumber returns (jsonschema.UnmarshalJSON,
// which this replaces): the same nesting limit, the last of repeated keys
// wins, invalid UTF-8 and lone surrogates become U+FFFD, empty arrays are
// non-nil. It does so in one pass, where the Decoder scans the value once to
// find its end and then again to build it, at about a third of the cost. The
// fuzz tests hold the two to the same results.
//
// The strings it returns that need no unquoting (nearly all) are slices of
// one copy of data, made once, rather than a copy each: a value kept after
// the others are dropped keeps that copy alive (at most a request body).
//
// Its errors say only that data is not well-formed: callers get the offset
// and message of the failure from encoding/json, on that cold path.
func parseJSON(data []byte) (any, error) {
	p := parser{data: data, text: string(data)}
	p.skipSpace()
	v, ok := p.value()
	if !ok {
		return nil, errMalformed
	}
	p.skipSpace()
	if p.i != len(p.data) {
		return nil, errMalformed
	}
	return v, nil
}

var errMalformed = errors.New("malformed JSON")

// maxDepth is encoding/json's nesting limit: that many arrays and objects
// may be open at once, one more is an error.
const maxDepth = 10000

type parser struct {
	data  []byte
	text  string // data, as the string the parsed strings are slices of
	i     int
	depth int
}

func (p *parser) skipSpace() {
	for p.i < len(p.data) {
		switch p.data[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

// value parses the value at p.i, which is not white space.
func (p *parser) value() (any, bool) {
	if p.i >= len(p.data) {
		return nil, false
	}
	switch c := p.data[p.i]; c {
	case '{':
		return p.object()
	case '[':
		return p.array()
	case '"':
		s, ok := p.str(false)
		return s, ok
	case 't':
		return true, p.literal("true")
	case 'f':
		return false, p.literal("false")
	case 'n':
		return nil, p.literal("null")
	default:
		if c == '-' || (c >= '0' && c <= '9') {
			return p.number()
		}
		return nil, false
	}
}

func (p *parser) literal(lit string) bool {
	if len(p.data)-p.i < len(lit) || string(p.data[p.i:p.i+len(lit)]) != lit {
		return false
	}
	p.i += len(lit)
	return true
}

func (p *parser) object() (any, bool) {
	if p.depth++; p.depth > maxDepth {
		return nil, false
	}
	p.i++ // '{'
	m := make(map[string]any)
	p.skipSpace()
	if p.i < len(p.data) && p.data[p.i] == '}' {
		p.i++
		p.depth--
		return m, true
	}
	for {
		if p.i >= len(p.data) || p.data[p.i] != '"' {
			return nil, false
		}
		k, ok := p.str(true)
		if !ok {
			return nil, false
		}
		p.skipSpace()
		if p.i >= len(p.data) || p.data[p.i] != ':' {
			return nil, false
		}
		p.i++
		p.skipSpace()
		v, ok := p.value()
		if !ok {
			return nil, false
		}
		m[k] = v
		p.skipSpace()
		if p.i >= len(p.data) {
			return nil, false
		}
		switch p.data[p.i] {
		case ',':
			p.i++
			p.skipSpace()
		case '}':
			p.i++
			p.depth--
			return m, true
		default:
			return nil, false
		}
	}
}

func (p *parser) array() (any, bool) {
	if p.depth++; p.depth > maxDepth {
		return nil, false
	}
	p.i++ // '['
	a := make([]any, 0)
	p.skipSpace()
	if p.i < len(p.data) && p.data[p.i] == ']' {
		p.i++
		p.depth--
		return a, true
	}
	for {
		v, ok := p.value()
		if !ok {
			return nil, false
		}
		a = append(a, v)
		p.skipSpace()
		if p.i >= len(p.data) {
			return nil, false
		}
		switch p.data[p.i] {
		case ',':
			p.i++
			p.skipSpace()
		case ']':
			p.i++
			p.depth--
			return a, true
		default:
			return nil, false
		}
	}
}

// number parses -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? into a
// json.Number holding it as written.
func (p *parser) number() (any, bool) {
	d, start := p.data, p.i
	i := start
	if d[i] == '-' {
		i++
	}
	switch {
	case i < len(d) && d[i] == '0':
		i++
	case i < len(d) && d[i] >= '1' && d[i] <= '9':
		i = digits(d, i+1)
	default:
		return nil, false
	}
	if i < len(d) && d[i] == '.' {
		j := digits(d, i+1)
		if j == i+1 {
			return nil, false
		}
		i = j
	}
	if i < len(d) && (d[i] == 'e' || d[i] == 'E') {
		i++
		if i < len(d) && (d[i] == '+' || d[i] == '-') {
			i++
		}
		j := digits(d, i)
		if j == i {
			return nil, false
		}
		i = j
	}
	p.i = i
	return json.Number(d[start:i]), true
}

func digits(d []byte, i int) int {
	for i < len(d) && d[i] >= '0' && d[i] <= '9' {
		i++
	}
	return i
}

// str parses the string at p.i (a '"'). Most strings hold no escape and are
// valid UTF-8: they are copied as they are. key says it is an object key:
// the common ones are not copied at all.
func (p *parser) str(key bool) (string, bool) {
	d := p.data
	start := p.i + 1
	ascii := true
	for i := start; i < len(d); i++ {
		switch c := d[i]; {
		case c == '"':
			p.i = i + 1
			raw := d[start:i]
			if !ascii && !utf8.Valid(raw) {
				return string(unquoteSlow(raw, make([]byte, 0, len(raw)+8))), true
			}
			if key {
				if s, ok := commonKey(raw); ok {
					return s, true
				}
			}
			return p.text[start:i], true
		case c == '\\':
			return p.strEscaped(start)
		case c < 0x20:
			return "", false
		case c >= utf8.RuneSelf:
			ascii = false
		}
	}
	return "", false
}

// strEscaped parses the string whose content starts at d[start] and holds
// an escape: it checks the escapes, finds the end and unquotes.
func (p *parser) strEscaped(start int) (string, bool) {
	d := p.data
	for i := start; i < len(d); i++ {
		switch c := d[i]; {
		case c == '"':
			p.i = i + 1
			return string(unquoteSlow(d[start:i], make([]byte, 0, i-start))), true
		case c == '\\':
			i++
			if i >= len(d) {
				return "", false
			}
			switch d[i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if i+4 >= len(d) || hex4(d[i+1:i+5]) < 0 {
					return "", false
				}
				i += 4
			default:
				return "", false
			}
		case c < 0x20:
			return "", false
		}
	}
	return "", false
}

// unquoteSlow appends to b the content of a string whose escapes are
// well-formed, as encoding/json unquotes it: a \u escape of a lone
// surrogate, and each byte of invalid UTF-8, become U+FFFD.
func unquoteSlow(s, b []byte) []byte {
	for r := 0; r < len(s); {
		switch c := s[r]; {
		case c == '\\':
			switch s[r+1] {
			case 'b':
				b = append(b, '\b')
			case 'f':
				b = append(b, '\f')
			case 'n':
				b = append(b, '\n')
			case 'r':
				b = append(b, '\r')
			case 't':
				b = append(b, '\t')
			case 'u':
				rr := rune(hex4(s[r+2 : r+6]))
				r += 6
				if utf16.IsSurrogate(rr) {
					rr1 := rune(-1)
					if r+6 <= len(s) && s[r] == '\\' && s[r+1] == 'u' {
						rr1 = rune(hex4(s[r+2 : r+6]))
					}
					if dec := utf16.DecodeRune(rr, rr1); dec != unicode.ReplacementChar {
						r += 6
						b = utf8.AppendRune(b, dec)
						continue
					}
					rr = unicode.ReplacementChar
				}
				b = utf8.AppendRune(b, rr)
				continue
			default: // '"', '\\', '/'
				b = append(b, s[r+1])
			}
			r += 2
		case c < utf8.RuneSelf:
			b = append(b, c)
			r++
		default:
			rr, size := utf8.DecodeRune(s[r:])
			r += size
			b = utf8.AppendRune(b, rr)
		}
	}
	return b
}

// hex4 decodes 4 hex digits, or returns -1.
func hex4(h []byte) int {
	if len(h) < 4 {
		return -1
	}
	n := 0
	for _, c := range h[:4] {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			c = c - 'A' + 10
		default:
			return -1
		}
		n = n<<4 | int(c)
	}
	return n
}

// commonKey returns the keys of events and batches as constants, so that
// parsing them allocates nothing.
func commonKey(k []byte) (string, bool) {
	switch string(k) {
	case "type":
		return "type", true
	case "messageId":
		return "messageId", true
	case "userId":
		return "userId", true
	case "anonymousId":
		return "anonymousId", true
	case "event":
		return "event", true
	case "traits":
		return "traits", true
	case "properties":
		return "properties", true
	case "context":
		return "context", true
	case "timestamp":
		return "timestamp", true
	case "writeKey":
		return "writeKey", true
	case "batch":
		return "batch", true
	case "sentAt":
		return "sentAt", true
	case "integrations":
		return "integrations", true
	case "library":
		return "library", true
	case "name":
		return "name", true
	case "version":
		return "version", true
	case "page":
		return "page", true
	case "path":
		return "path", true
	case "url":
		return "url", true
	case "userAgent":
		return "userAgent", true
	case "locale":
		return "locale", true
	case "ip":
		return "ip", true
	case "email":
		return "email", true
	}
	return "", false
}
