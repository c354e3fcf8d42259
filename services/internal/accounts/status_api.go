package accounts

import (
	"net/http"
	"os"
	"time"

	"github.com/shardflow/shardflow/services/internal/status"
)

// EnvStatusMetricsURLs lists the /metrics endpoints (or health host:port) of
// the processor and sender instances, comma separated, for GET /v1/status's
// drop, dead-lettered and redelivery counters. Unset: those numbers are null
// in the answer (JetStream and Postgres numbers are always there).
const EnvStatusMetricsURLs = "SHARDFLOW_STATUS_METRICS_URLS"

// Status sampling bounds of GET /v1/status.
const (
	DefaultStatusSample = time.Second
	MaxStatusSample     = 10 * time.Second
)

// statusCollector builds the collector (cheap: no I/O) from the service's
// clients and the environment.
func (s *Service) statusCollector() (*status.Collector, error) {
	return status.New(status.Config{
		JetStream: s.js, Topology: s.topo, Pool: s.pool,
		MetricsURLs: status.ParseList(os.Getenv(EnvStatusMetricsURLs)),
	})
}

// handleStatus serves GET /v1/status?sample=1s: the status snapshot
// `sfctl status --json` prints (package status), its rates taken over
// sample (default 1s, at most 10s; 0 for one sample without rates), with
// dead letters by error class from Postgres.
func (s *Service) handleStatus(w http.ResponseWriter, r *http.Request) {
	sample := DefaultStatusSample
	if v := r.URL.Query().Get("sample"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 || d > MaxStatusSample {
			writeError(w, http.StatusBadRequest, "sample: want a duration from 0s to "+MaxStatusSample.String()+", e.g. 2s")
			return
		}
		sample = d
	}
	col, err := s.statusCollector()
	if err != nil {
		s.fail(w, r, err)
		return
	}
	snap, err := col.Sample(r.Context(), sample)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, snap)
}
