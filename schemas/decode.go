package schemas

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// Default limits, as in the Segment HTTP tracking API.
const (
	DefaultMaxEventBytes = 32 << 10  // 32 KiB per event
	DefaultMaxBatchBytes = 500 << 10 // 500 KiB per batch request
)

// Limits bounds what a client may send. Zero (or negative) fields take the
// defaults.
type Limits struct {
	MaxEventBytes int // default 32 KiB (Segment: 32 KB per event)
	MaxBatchBytes int // default 500 KiB (Segment: 500 KB per batch request)
}

// DefaultLimits returns the default limits.
func DefaultLimits() Limits {
	return Limits{MaxEventBytes: DefaultMaxEventBytes, MaxBatchBytes: DefaultMaxBatchBytes}
}

func (l Limits) withDefaults() Limits {
	if l.MaxEventBytes <= 0 {
		l.MaxEventBytes = DefaultMaxEventBytes
	}
	if l.MaxBatchBytes <= 0 {
		l.MaxBatchBytes = DefaultMaxBatchBytes
	}
	return l
}

// DecodeEvent parses and validates a single identify or track request body.
// typ is the event type implied by the endpoint (TypeIdentify or
// TypeTrack); a "type" in the body, optional, must agree with it. The
// returned event always has Type set.
//
// The body is limited to lim.MaxEventBytes. Errors are *LimitError,
// *SyntaxError or *ValidationError.
func DecodeEvent(typ string, body []byte, lim Limits) (*Event, error) {
	lim = lim.withDefaults()
	var sch *jsonschema.Schema
	switch typ {
	case TypeIdentify:
		sch = compiled().identify
	case TypeTrack:
		sch = compiled().track
	default:
		return nil, &ValidationError{Fields: []FieldError{{"type", unknownTypeMessage(typ)}}}
	}
	if len(body) > lim.MaxEventBytes {
		return nil, &LimitError{Field: "body", Size: len(body), Limit: lim.MaxEventBytes}
	}
	obj, err := parseObject(body)
	if err != nil {
		return nil, err
	}
	if t, ok := obj["type"].(string); ok && t != typ {
		msg := unknownTypeMessage(t)
		if t == TypeIdentify || t == TypeTrack {
			msg = fmt.Sprintf("is %q, but this endpoint only accepts %q events", t, typ)
		}
		return nil, &ValidationError{Fields: []FieldError{{"type", msg}}}
	}
	if err := sch.Validate(obj); err != nil {
		return nil, newValidationError(err, obj)
	}
	c := converter{t: translator{inst: obj}}
	ev := c.event(obj, nil)
	if len(c.t.out) > 0 {
		return nil, c.t.result()
	}
	ev.Type = typ
	ev.normalize()
	return &ev, nil
}

// DecodeBatch parses and validates a whole batch request body; all or
// nothing: one bad event rejects the batch.
//
// The body is limited to lim.MaxBatchBytes and each event of the batch to
// lim.MaxEventBytes. Errors are *LimitError, *SyntaxError or
// *ValidationError; field paths name the index of the offending event, as
// in "batch[3].event".
func DecodeBatch(body []byte, lim Limits) (*Batch, error) {
	b, _, err := DecodeBatchRaw(body, lim)
	return b, err
}

// DecodeBatchRaw is DecodeBatch, and also returns the JSON text of each
// event as sent: raw[i], a slice of body, is the object b.Batch[i] was
// decoded from. With [AppendEvent], a caller stores the events without
// encoding them again.
func DecodeBatchRaw(body []byte, lim Limits) (b *Batch, raw [][]byte, err error) {
	lim = lim.withDefaults()
	if len(body) > lim.MaxBatchBytes {
		return nil, nil, &LimitError{Field: "body", Size: len(body), Limit: lim.MaxBatchBytes}
	}
	obj, err := parseObject(body)
	if err != nil {
		return nil, nil, err
	}
	raw = batchItems(body)
	for i, item := range raw {
		if len(item) > lim.MaxEventBytes {
			return nil, nil, &LimitError{Field: "batch[" + strconv.Itoa(i) + "]", Size: len(item), Limit: lim.MaxEventBytes}
		}
	}
	if err := validateBatch(obj); err != nil {
		return nil, nil, err
	}
	c := converter{t: translator{inst: obj}}
	items, _ := obj["batch"].([]any) // an array of objects: checked by the schema
	b = &Batch{Batch: make([]Event, len(items))}
	loc := []string{"batch", ""}
	for i, item := range items {
		m, _ := item.(map[string]any)
		loc[1] = strconv.Itoa(i)
		b.Batch[i] = c.event(m, loc)
		b.Batch[i].normalize()
	}
	b.WriteKey, _ = obj["writeKey"].(string)
	b.Context = c.object(obj["context"], nil, "context")
	b.SentAt, _ = obj["sentAt"].(string)
	if len(c.t.out) > 0 {
		return nil, nil, c.t.result()
	}
	if len(raw) != len(b.Batch) { // cannot happen: both take the last "batch"
		raw = nil // AppendEvent encodes from the events alone
	}
	return b, raw, nil
}

// validateBatch validates a batch like batch.schema.json does, item by
// item: an item of a known type goes straight to its event schema, any
// other to the schema of $defs/item, for its errors.
func validateBatch(obj map[string]any) error {
	cs := compiled()
	t := translator{inst: obj}
	if err := cs.batchEnvelope.Validate(obj); err != nil {
		if err := t.collect(err, nil); err != nil {
			return err
		}
	}
	items, _ := obj["batch"].([]any)
	for i, item := range items {
		sch := cs.batchItem
		if m, ok := item.(map[string]any); ok {
			switch m["type"] {
			case TypeIdentify:
				sch = cs.identify
			case TypeTrack:
				sch = cs.track
			}
		}
		if err := sch.Validate(item); err != nil {
			if err := t.collect(err, []string{"batch", strconv.Itoa(i)}); err != nil {
				return err
			}
		}
	}
	if len(t.out) > 0 {
		return t.result()
	}
	return nil
}

// converter builds the Go types from a parsed and validated body. It
// replaces, in place, the json.Number values inside the free-form objects
// (traits, properties, context) by float64, as encoding/json decodes them,
// and records numbers out of the float64 range as field errors.
//
// Building the structs from the validated value, rather than decoding the
// body a second time with encoding/json, halves the decoding work and
// guarantees that what was validated is what is returned: encoding/json
// matches keys to struct fields case-insensitively, so
// {"anonymousId":"a","UserId":5} would pass the schema (UserId being an
// extra property) and then land, unvalidated, in Event.UserID.
type converter struct {
	t translator
}

// event builds an Event from m. Properties of the wrong type cannot occur
// after validation; they would be left zero.
func (c *converter) event(m map[string]any, loc []string) Event {
	var e Event
	e.Type, _ = m["type"].(string)
	e.MessageID, _ = m["messageId"].(string)
	e.UserID, _ = m["userId"].(string)
	e.AnonymousID, _ = m["anonymousId"].(string)
	e.Event, _ = m["event"].(string)
	e.Traits = c.object(m["traits"], loc, "traits")
	e.Properties = c.object(m["properties"], loc, "properties")
	e.Context = c.object(m["context"], loc, "context")
	e.Timestamp, _ = m["timestamp"].(string)
	e.WriteKey, _ = m["writeKey"].(string)
	return e
}

// object returns v, converted, if it is an object, or else nil. loc and
// name locate v, for errors.
func (c *converter) object(v any, loc []string, name string) map[string]any {
	m, _ := v.(map[string]any)
	if m != nil && !convertNumbers(m) {
		// A number out of range: again, to locate every one.
		c.value(m, append(loc[:len(loc):len(loc)], name))
	}
	return m
}

// convertNumbers converts the numbers of v in place, as value does, but
// without keeping track of where they are: it stops at the first number out
// of range, leaving it as it is, and returns false.
func convertNumbers(v any) bool {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			f, isNum, ok := convertNumber(e)
			if !ok {
				return false
			}
			if isNum {
				v[k] = f
			}
		}
	case []any:
		for i, e := range v {
			f, isNum, ok := convertNumber(e)
			if !ok {
				return false
			}
			if isNum {
				v[i] = f
			}
		}
	}
	return true
}

// convertNumber is convertNumbers for one element: a number is returned
// converted (isNum), an object or array converted in place; ok is false
// for a number out of range, in e or below it.
func convertNumber(e any) (f float64, isNum, ok bool) {
	switch e := e.(type) {
	case map[string]any, []any:
		return 0, false, convertNumbers(e)
	case json.Number:
		f, err := strconv.ParseFloat(string(e), 64)
		return f, true, err == nil
	}
	return 0, false, true
}

// value converts the numbers of v in place and returns the converted v.
// loc is v's location, for errors; it may share its array with the
// caller's and is only read while building an error.
func (c *converter) value(v any, loc []string) any {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			switch e.(type) {
			case map[string]any, []any, json.Number:
				v[k] = c.value(e, append(loc, k))
			}
		}
	case []any:
		for i, e := range v {
			switch e.(type) {
			case map[string]any, []any, json.Number:
				v[i] = c.value(e, append(loc, strconv.Itoa(i)))
			}
		}
	case json.Number:
		f, err := strconv.ParseFloat(string(v), 64)
		if err != nil {
			c.t.add(loc, "", fmt.Sprintf("number %s is out of range", echo(v)))
		}
		return f
	}
	return v
}

// batchItems returns the JSON text of each element of the top-level
// "batch" array of body, or nil if there is none. body must be
// well-formed JSON: its grammar is not checked again (but no input makes
// this panic or hang). As in the decoder, the last "batch" key wins.
func batchItems(body []byte) [][]byte {
	var items [][]byte
	members(body, func(key, val []byte) {
		if !isKey(key, "batch") {
			return
		}
		items = nil
		if len(val) > 0 && val[0] == '[' {
			items = elements(val)
		}
	})
	return items
}

// members calls fn with the quoted key and the JSON text of the value of
// each top-level member of the object b holds, in order. b must be
// well-formed JSON: its grammar is not checked again (but no input makes
// this panic or hang).
func members(b []byte, fn func(key, val []byte)) {
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return
	}
	i++
	for {
		i = skipSpace(b, i)
		if i >= len(b) || b[i] == '}' {
			return
		}
		if b[i] == ',' {
			i++
			continue
		}
		start := i
		i = skipString(b, i)
		key := b[start:i]
		i = skipSpace(b, i)
		if i < len(b) && b[i] == ':' {
			i++
		}
		i = skipSpace(b, i)
		vstart := i
		i = max(skipValue(b, i), vstart+1) // a stray ] or } is passed over
		fn(key, b[vstart:min(i, len(b))])
	}
}

// elements returns the JSON text of each element of the array arr holds
// (non-nil, empty for []). Like members, it does not check the grammar.
func elements(arr []byte) [][]byte {
	items := [][]byte{}
	for i := 1; ; { // after the [
		i = skipSpace(arr, i)
		if i >= len(arr) || arr[i] == ']' {
			return items
		}
		if arr[i] == ',' {
			i++
			continue
		}
		start := i
		i = max(skipValue(arr, i), start+1) // a stray } is passed over
		items = append(items, arr[start:min(i, len(arr)):min(i, len(arr))])
	}
}

// isKey reports whether key, a quoted JSON string, decodes to name.
func isKey(key []byte, name string) bool {
	if len(key) == len(name)+2 && string(key[1:len(key)-1]) == name {
		return true
	}
	if bytes.IndexByte(key, '\\') < 0 {
		return false
	}
	var s string
	return json.Unmarshal(key, &s) == nil && s == name
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// skipString returns the index after the string starting at b[i] == '"'
// (len(b) if it does not end): at the first quote not escaped, that is not
// preceded by an odd run of backslashes inside the string.
func skipString(b []byte, i int) int {
	start := i + 1
	for j := start; j < len(b); {
		q := bytes.IndexByte(b[j:], '"')
		if q < 0 {
			break
		}
		j += q
		n := 0
		for k := j - 1; k >= start && b[k] == '\\'; k-- {
			n++
		}
		if n%2 == 0 {
			return j + 1
		}
		j++
	}
	return len(b)
}

// skipValue returns the index after the value starting at b[i].
func skipValue(b []byte, i int) int {
	if i >= len(b) {
		return i
	}
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for i < len(b) {
			switch b[i] {
			case '"':
				i = skipString(b, i)
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
			i++
		}
		return i
	}
	for i < len(b) {
		switch b[i] {
		case ',', '}', ']', ' ', '\t', '\n', '\r':
			return i
		}
		i++
	}
	return i
}

// ValidateOutbound validates an encoded outbound message against
// outbound.schema.json. Errors are *SyntaxError or *ValidationError.
func ValidateOutbound(b []byte) error {
	return validateDoc(compiled().outbound, b)
}

// ValidateAccountEvent validates an encoded account event against
// account_event.schema.json. Errors are *SyntaxError or *ValidationError.
func ValidateAccountEvent(b []byte) error {
	return validateDoc(compiled().accountEvent, b)
}

// ValidateDeadLetter validates an encoded dead-letter envelope against
// deadletter.schema.json, and checks that its id is
// "<originStream>:<originSeq>". Errors are *SyntaxError or
// *ValidationError.
func ValidateDeadLetter(b []byte) error {
	obj, err := parseObject(b)
	if err != nil {
		return err
	}
	if err := compiled().deadLetter.Validate(obj); err != nil {
		return newValidationError(err, obj)
	}
	id, _ := obj["id"].(string)
	stream, _ := obj["originStream"].(string)
	seq, _ := obj["originSeq"].(json.Number)
	if n, err := strconv.ParseUint(seq.String(), 10, 64); err == nil {
		if want := stream + ":" + strconv.FormatUint(n, 10); id != want {
			return &ValidationError{Fields: []FieldError{{
				Field:   "id",
				Message: fmt.Sprintf("must be %s (<originStream>:<originSeq>), got %s", echo(want), echo(id)),
			}}}
		}
	}
	return nil
}

func validateDoc(sch *jsonschema.Schema, b []byte) error {
	obj, err := parseObject(b)
	if err != nil {
		return err
	}
	if err := sch.Validate(obj); err != nil {
		return newValidationError(err, obj)
	}
	return nil
}

// parseObject parses body the way the jsonschema library expects (numbers
// as json.Number, see parseJSON) and checks that it is an object.
func parseObject(body []byte) (map[string]any, error) {
	v, err := parseJSON(body)
	if err != nil {
		return nil, syntaxError(body, err)
	}
	obj, ok := v.(map[string]any)
	if !ok {
		off := len(body) - len(bytes.TrimLeft(body, " \t\r\n"))
		return nil, &SyntaxError{Offset: int64(off), Msg: "expected a JSON object, got " + jsonKind(v)}
	}
	return obj, nil
}

// syntaxError builds a *SyntaxError for a body the parser rejected. The
// streaming parser does not report an offset for every failure (trailing
// data, truncated input), so on this cold path the body is checked again
// with json.Unmarshal, which does.
func syntaxError(body []byte, err error) *SyntaxError {
	var se *json.SyntaxError
	if errors.As(json.Unmarshal(body, new(json.RawMessage)), &se) || errors.As(err, &se) {
		return &SyntaxError{Offset: se.Offset, Msg: se.Error(), err: se}
	}
	return &SyntaxError{Offset: int64(len(body)), Msg: err.Error(), err: err}
}

func jsonKind(v any) string {
	switch v.(type) {
	case []any:
		return "an array"
	case string:
		return "a string"
	case json.Number:
		return "a number"
	case bool:
		return "a boolean"
	case nil:
		return "null"
	}
	return fmt.Sprintf("%T", v)
}

// normalize drops the fields that do not belong to the event's type: the
// schemas accept them, as extras, but they are not part of the event.
func (e *Event) normalize() {
	switch e.Type {
	case TypeIdentify:
		e.Event, e.Properties = "", nil
	case TypeTrack:
		e.Traits = nil
	}
}
