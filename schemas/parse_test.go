package schemas_test

import (
	"bytes"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/shardflow/shardflow/schemas"
)

// parseSeeds are the inputs where a JSON parser is most likely to part
// from encoding/json: escapes, surrogates, invalid UTF-8, the number
// grammar, white space, repeated keys, truncation.
var parseSeeds = []string{
	`{}`, `[]`, `{"a":[]}`, `[[],{}]`, ` {"a" : 1 , "b" :[ 1 , 2 ] } `, "\t\r\n{}\n",
	`{"a":1,"a":{"b":2},"a":[3]}`, `{"":""}`,
	`"plain"`, `"é"`, `"\u00e9"`, `"\"\\\/\b\f\n\r\t"`, `"\ud83d\ude00"`, `"\ud83d"`, `"\ude00"`, `"\ud83dx"`,
	`"\ud83d\u0041"`, `"\ud83d\ud83d\ude00"`, `"\ude00\ud83d"`, `"\u0000"`, `"\uFFFF"`, `"\uD800\uDC00"`, `"\uDBFF\uDFFF"`,
	"\"\xff\"", "\"a\xc3\"", "\"\xed\xa0\x80\"", "\"\xef\xbf\xbd\"", "\"\xf4\x90\x80\x80\"", "\"\xc0\xaf\\n\"",
	"\"\x01\"", "\"\x1f\"", "\"\x7f\"", `"\x"`, `"\u12"`, `"\u12g4"`, `"\`, `"abc`, `"\u`, `"\ud83d\`, `"\ud83d\u`,
	`0`, `-0`, `1`, `-1`, `01`, `-01`, `+1`, `.5`, `1.`, `1.5`, `1.e3`, `1e`, `1e+`, `1e-5`, `1E+05`, `-`, `--1`,
	`12345678901234567890123`, `1e400`, `-0.0e-0`, `0x10`, `NaN`, `Infinity`, `1 2`, `[1,]`, `[,1]`, `{"a":1,}`,
	`{,}`, `{"a"}`, `{"a":}`, `{"a" 1}`, `{1:2}`, `{'a':1}`, `[1 2]`,
	`true`, `false`, `null`, `tru`, `nul`, `truex`, `[true,false,null]`, `nullnull`, `{} {}`, `{}x`, `{}]`,
	"", " ", "\ufeff{}", "\x00", "{}\x00", "[\v]", "[\f1]",
	`{"batch":[{"type":"track","userId":"u","event":"e","properties":{"n":1.5e3,"l":[1,{"x":null}]}}],"writeKey":"k"}`,
}

// FuzzParseJSON holds parseJSON to jsonschema.UnmarshalJSON (encoding/json's
// Decoder with UseNumber), which it replaces: the same inputs accepted, the
// same values returned.
func FuzzParseJSON(f *testing.F) {
	for _, s := range parseSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		got, gotErr := schemas.ParseJSON(data)
		want, wantErr := jsonschema.UnmarshalJSON(bytes.NewReader(data))
		if (gotErr != nil) != (wantErr != nil) {
			t.Fatalf("parseJSON error %v, encoding/json error %v\n%q", gotErr, wantErr, data)
		}
		if gotErr == nil && !reflect.DeepEqual(got, want) {
			t.Fatalf("parseJSON: %#v\nencoding/json: %#v\n%q", got, want, data)
		}
	})
}

func TestParseJSONDepth(t *testing.T) {
	for _, tt := range []struct {
		depth int
		ok    bool
	}{{10000, true}, {10001, false}} {
		for _, open := range []string{"[", `{"a":`} {
			close := map[string]string{"[": "]", `{"a":`: "}"}[open]
			inner := map[string]string{"[": "[]", `{"a":`: "{}"}[open]
			data := []byte(strings.Repeat(open, tt.depth-1) + inner + strings.Repeat(close, tt.depth-1))
			_, err := schemas.ParseJSON(data)
			_, ref := jsonschema.UnmarshalJSON(bytes.NewReader(data))
			if (err == nil) != tt.ok || (ref == nil) != tt.ok {
				t.Errorf("depth %d of %q: parseJSON error %v, encoding/json error %v, want ok=%v", tt.depth, open, err, ref, tt.ok)
			}
		}
	}
}

// FuzzMessageIDPattern holds the messageId matcher to Go's regexp, which
// it replaces for that pattern.
func FuzzMessageIDPattern(f *testing.F) {
	for _, s := range []string{"", "a", "ajs-next-1", "é", "\x00", "a\x1f", "\x7f", "\u0080", "\u009f", "\u00a0", "a\n", "\n", "\xff", "a\xc2", "\xc2\x9f", "\xc2\xa0", "\u2028", "\U0010FFFF", "\xed\xa0\x80"} {
		f.Add(s)
	}
	re := regexp.MustCompile(schemas.MessageIDPattern)
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := schemas.MatchMessageID(s), re.MatchString(s); got != want {
			t.Fatalf("%q: matcher %v, regexp %v", s, got, want)
		}
	})
}
