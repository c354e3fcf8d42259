package ingest_test

import (
	"bytes"
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// BenchmarkBatch100 posts /v1/batch requests of 100 events of about 1 KiB
// (no messageId: ingest makes one) from parallel clients through the real
// handler to an embedded JetStream, with group commit as ingest runs it.
// `go test -bench Batch100 -cpuprofile cpu.out` then
// `go tool pprof -focus ingest.*Handler cpu.out` shows where ingest's own
// time goes.
func BenchmarkBatch100(b *testing.B) {
	f := setupWith(b, 512<<10, 1)
	var sb strings.Builder
	sb.WriteString(`{"batch":[`)
	for i := range 100 {
		if i > 0 {
			sb.WriteByte(',')
		}
		fmt.Fprintf(&sb, `{"type":"track","userId":"user-%d","event":"Product Added","properties":{"product_id":"507f1f77bcf86cd799439011","sku":"G-32","category":"Games","name":"Monopoly: 3rd Edition","price":18.99,"quantity":1,"position":3,"note":%q},`+
			`"context":{"library":{"name":"analytics.js","version":"next-1.53.0"},"page":{"path":"/cart","url":"https://shop.example.com/cart"},"userAgent":"Mozilla/5.0 (X11; Linux x86_64)","locale":"en-US"}}`, i, strings.Repeat("x", 500))
	}
	sb.WriteString(`]}`)
	body := []byte(sb.String())
	b.SetBytes(int64(len(body)))
	b.SetParallelism(16)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req, _ := http.NewRequest("POST", f.srv.URL+"/v1/batch", bytes.NewReader(body))
			req.SetBasicAuth("wk_acme", "")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				b.Error(err)
				return
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				b.Errorf("status %d", resp.StatusCode)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N*100)/b.Elapsed().Seconds(), "events/s")
}
