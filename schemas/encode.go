package schemas

import (
	"encoding/json"
	"unicode/utf8"
)

// AppendEvent appends the JSON encoding of ev to dst: the members
// json.Marshal(ev) writes, in the same order and with the same meaning, but
// with Traits, Properties and Context (the free-form objects, nearly all of
// the cost of encoding an event) copied from raw when raw holds them,
// rather than encoded again.
//
// raw is the JSON object ev was decoded from: the body given to
// DecodeEvent, or the item of a batch given by DecodeBatchRaw. Since then,
// ev's string fields may have changed (a messageId or timestamp filled in,
// the writeKey cleared: they are encoded from ev), and a map raw does not
// hold may have been set (the batch's context, given to an event without
// one: it is encoded from ev); but a map raw holds must not have been
// changed. With raw nil, everything is encoded from ev.
//
// The result decodes, with DecodeEvent, to ev: numbers in the copied
// objects are written as the client wrote them and decode to the same
// float64, strings to the same text.
func AppendEvent(dst []byte, ev *Event, raw []byte) ([]byte, error) {
	var traits, properties, context []byte
	if raw != nil {
		traits, properties, context = rawObjects(raw)
	}
	dst = append(dst, '{')
	first := true
	member := func(name string) {
		if !first {
			dst = append(dst, ',')
		}
		first = false
		dst = append(dst, '"')
		dst = append(dst, name...)
		dst = append(dst, '"', ':')
	}
	str := func(name, v string) {
		if v != "" {
			member(name)
			dst = appendString(dst, v)
		}
	}
	var err error
	obj := func(name string, v map[string]any, raw []byte) {
		if len(v) == 0 || err != nil {
			return // omitempty, as json.Marshal
		}
		member(name)
		if raw != nil && !isEmptyObject(raw) {
			dst = append(dst, raw...)
			return
		}
		var b []byte
		b, err = json.Marshal(v)
		dst = append(dst, b...)
	}
	// The order of Event's fields, as json.Marshal writes them.
	str("type", ev.Type)
	str("messageId", ev.MessageID)
	str("userId", ev.UserID)
	str("anonymousId", ev.AnonymousID)
	str("event", ev.Event)
	obj("traits", ev.Traits, traits)
	obj("properties", ev.Properties, properties)
	obj("context", ev.Context, context)
	str("timestamp", ev.Timestamp)
	str("writeKey", ev.WriteKey)
	if err != nil {
		return dst, err
	}
	return append(dst, '}'), nil
}

// rawObjects returns the JSON text of the values of the top-level members
// traits, properties and context of raw, a well-formed JSON object, when
// they are objects; as in the decoder, the last of repeated keys wins.
func rawObjects(raw []byte) (traits, properties, context []byte) {
	members(raw, func(key, val []byte) {
		if len(val) == 0 || val[0] != '{' {
			val = nil
		}
		switch {
		case isKey(key, "traits"):
			traits = val
		case isKey(key, "properties"):
			properties = val
		case isKey(key, "context"):
			context = val
		}
	})
	return traits, properties, context
}

// isEmptyObject reports whether b, a JSON object, has no member.
func isEmptyObject(b []byte) bool {
	i := skipSpace(b, 1)
	return i < len(b) && b[i] == '}'
}

// appendString appends s as a JSON string. Plain printable ASCII, which
// ids, names and timestamps nearly always are, is written as it is; other
// strings as encoding/json writes them.
func appendString(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == '"' || c == '\\' || c >= utf8.RuneSelf || c == '<' || c == '>' || c == '&' {
			b, _ := json.Marshal(s) // a string always encodes
			return append(dst, b...)
		}
	}
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"')
}
