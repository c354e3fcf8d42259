package schemas

import (
	"bytes"
	"embed"
	"fmt"
	"io/fs"
	"path"
	"regexp"
	"sync"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// BaseURL is the URL every schema $id lives under, e.g.
// https://shardflow.dev/schemas/track.schema.json.
const BaseURL = "https://shardflow.dev/schemas/"

// Schema file names, relative to [BaseURL] and to the root of [SchemaFiles].
const (
	IdentifySchema     = "identify.schema.json"
	TrackSchema        = "track.schema.json"
	BatchSchema        = "batch.schema.json"
	OutboundSchema     = "outbound.schema.json"
	AccountEventSchema = "account_event.schema.json"
	DeadLetterSchema   = "deadletter.schema.json"
	// EventSchema holds the fields shared by identify and track events; it
	// is referenced by them and not used on its own.
	EventSchema = "event.schema.json"
)

//go:embed schemas/json/*.schema.json
var embedded embed.FS

const embeddedDir = "schemas/json"

// SchemaFiles returns the embedded JSON Schema documents, at the root of the
// returned file system under their file names (e.g. "track.schema.json").
func SchemaFiles() fs.FS {
	sub, err := fs.Sub(embedded, embeddedDir)
	if err != nil { // cannot happen: the directory is embedded
		panic(fmt.Errorf("schemas: embedded files: %w", err))
	}
	return sub
}

// compiledSchemas holds one compiled schema per top-level document, and
// the two halves of the batch schema used by DecodeBatch.
type compiledSchemas struct {
	identify, track, batch, outbound, accountEvent, deadLetter *jsonschema.Schema

	// batchEnvelope is batch.schema.json without the rule for the items of
	// "batch", and batchItem that rule ($defs/item). DecodeBatch validates
	// with them, sending the items of a known type straight to their event
	// schema: the same rules, validated in about 60% of the time the
	// if/then dispatch of $defs/item takes (tests check that both agree).
	batchEnvelope, batchItem *jsonschema.Schema
}

// batchEnvelopeName is the (internal, not embedded) name of the envelope
// schema, in the same directory so that relative references resolve.
const batchEnvelopeName = "batch-envelope.internal.json"

// compiled compiles every schema once, on first use. The documents are
// embedded and covered by tests, so a failure is a programming error and
// panics (on this and every later call).
var compiled = sync.OnceValue(func() *compiledSchemas {
	c, err := compileAll()
	if err != nil {
		panic(err)
	}
	return c
})

func compileAll() (*compiledSchemas, error) {
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	c.AssertFormat()  // date-time, uri
	c.AssertContent() // base64 payload of dead letters
	c.UseRegexpEngine(compileRegexp)
	entries, err := fs.ReadDir(embedded, embeddedDir)
	if err != nil {
		return nil, fmt.Errorf("schemas: read embedded files: %w", err)
	}
	for _, e := range entries {
		b, err := embedded.ReadFile(path.Join(embeddedDir, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("schemas: read %s: %w", e.Name(), err)
		}
		doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
		if err != nil {
			return nil, fmt.Errorf("schemas: parse %s: %w", e.Name(), err)
		}
		if err := c.AddResource(BaseURL+e.Name(), doc); err != nil {
			return nil, fmt.Errorf("schemas: add %s: %w", e.Name(), err)
		}
		if e.Name() == BatchSchema {
			env, err := batchEnvelope(b)
			if err != nil {
				return nil, err
			}
			if err := c.AddResource(BaseURL+batchEnvelopeName, env); err != nil {
				return nil, fmt.Errorf("schemas: add %s: %w", batchEnvelopeName, err)
			}
		}
	}
	var out compiledSchemas
	for _, s := range []struct {
		dst  **jsonschema.Schema
		name string
	}{
		{&out.identify, IdentifySchema},
		{&out.track, TrackSchema},
		{&out.batch, BatchSchema},
		{&out.outbound, OutboundSchema},
		{&out.accountEvent, AccountEventSchema},
		{&out.deadLetter, DeadLetterSchema},
		{&out.batchEnvelope, batchEnvelopeName},
		{&out.batchItem, BatchSchema + "#/$defs/item"},
	} {
		sch, err := c.Compile(BaseURL + s.name)
		if err != nil {
			return nil, fmt.Errorf("schemas: compile %s: %w", s.name, err)
		}
		*s.dst = sch
	}
	return &out, nil
}

// batchEnvelope derives the envelope schema from batch.schema.json: the
// same document without the items rule and its definition.
func batchEnvelope(batchSchema []byte) (map[string]any, error) {
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(batchSchema))
	if err != nil {
		return nil, fmt.Errorf("schemas: parse %s: %w", BatchSchema, err)
	}
	env, _ := doc.(map[string]any)
	props, _ := env["properties"].(map[string]any)
	batch, _ := props["batch"].(map[string]any)
	if _, ok := batch["items"]; !ok {
		return nil, fmt.Errorf("schemas: %s: no properties.batch.items", BatchSchema)
	}
	delete(batch, "items")
	delete(env, "$defs")
	env["$id"] = BaseURL + batchEnvelopeName
	return env, nil
}

// compileRegexp compiles the schemas' patterns with Go's regexp (the
// library's default), except the messageId pattern, which every event
// carrying a messageId is checked against: a loop over the runes matches
// exactly the same strings at a fraction of the cost.
func compileRegexp(pattern string) (jsonschema.Regexp, error) {
	if pattern == messageIDPattern {
		return noControlChars{}, nil
	}
	return regexp.Compile(pattern)
}

// noControlChars matches messageIDPattern, ^[^\x00-\x1F\x7F-\x9F]+$: a
// non-empty string without C0 or C1 control characters. As in Go's regexp,
// each byte of invalid UTF-8 is a U+FFFD, which matches.
type noControlChars struct{}

func (noControlChars) MatchString(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if r <= 0x1F || (r >= 0x7F && r <= 0x9F) {
			return false
		}
	}
	return true
}

func (noControlChars) String() string { return messageIDPattern }
