package schemas_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/shardflow/shardflow/schemas"
)

// batchBody returns a batch of n realistic events (as sent by
// analytics.js), alternately track and identify.
func batchBody(n int) []byte {
	var b strings.Builder
	b.WriteString(`{"batch":[`)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		if i%2 == 0 {
			fmt.Fprintf(&b, `{"type":"track","messageId":"ajs-next-%032d","anonymousId":"3f1b2c4d-5e6f-4a8b-9c0d-1e2f3a4b5c6d","userId":"user-%d",`+
				`"event":"Product Added","properties":{"product_id":"507f1f77bcf86cd799439011","sku":"G-32","category":"Games","name":"Monopoly: 3rd Edition","price":18.99,"quantity":1,"position":3},`+
				`"context":{"library":{"name":"analytics.js","version":"next-1.53.0"},"page":{"path":"/cart","url":"https://shop.example.com/cart"},"userAgent":"Mozilla/5.0 (X11; Linux x86_64)","locale":"en-US"},`+
				`"timestamp":"2024-03-01T10:00:%02d.123Z","integrations":{},"sentAt":"2024-03-01T10:00:59.000Z"}`, i, i, i%60)
		} else {
			fmt.Fprintf(&b, `{"type":"identify","messageId":"ajs-next-%032d","anonymousId":"3f1b2c4d-5e6f-4a8b-9c0d-1e2f3a4b5c6d","userId":"user-%d",`+
				`"traits":{"email":"user%d@example.com","name":"Peter Gibbons","plan":"premium","logins":5,"company":{"name":"Initech","employees":329}},`+
				`"context":{"library":{"name":"analytics.js","version":"next-1.53.0"},"ip":"192.0.2.1"},"timestamp":"2024-03-01T10:00:%02d.123Z"}`, i, i, i, i%60)
		}
	}
	b.WriteString(`],"writeKey":"wk_123","sentAt":"2024-03-01T10:00:59.000Z"}`)
	return []byte(b.String())
}

func BenchmarkDecodeBatch100(b *testing.B) {
	body := batchBody(100)
	if _, err := schemas.DecodeBatch(body, schemas.Limits{}); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := schemas.DecodeBatch(body, schemas.Limits{}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeEvent(b *testing.B) {
	body := []byte(`{"type":"track","messageId":"ajs-next-1","anonymousId":"3f1b2c4d","userId":"user-1","event":"Product Added",` +
		`"properties":{"sku":"G-32","price":18.99},"context":{"library":{"name":"analytics.js"}},"timestamp":"2024-03-01T10:00:00.123Z"}`)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := schemas.DecodeEvent(schemas.TypeTrack, body, schemas.Limits{}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeBatch100Invalid(b *testing.B) {
	body := []byte(strings.ReplaceAll(string(batchBody(100)), `"event":"Product Added",`, ``))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := schemas.DecodeBatch(body, schemas.Limits{}); err == nil {
			b.Fatal("accepted")
		}
	}
}
