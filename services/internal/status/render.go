package status

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// Render prints a snapshot as text: a summary table with a line per shard,
// then, per shard, its streams and stage consumers.
func Render(w io.Writer, s Snapshot) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "at %s", s.At.Format(time.RFC3339))
	if s.WindowSeconds > 0 {
		fmt.Fprintf(tw, " (rates over %.1fs)", s.WindowSeconds)
	}
	fmt.Fprintf(tw, "; sources: %s\n", strings.Join(s.Sources, ", "))
	for _, warn := range s.Warnings {
		fmt.Fprintf(tw, "warning: %s\n", warn)
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "SHARD\tIN_PENDING\tOUT_PENDING\tPROCESSED/S (in/out)\tDRAIN_ETA\tDEAD_LETTERS\tDROPPED\tREDELIVERIES\t")
	for _, sh := range s.Shards {
		rate := "-"
		if sh.ProcessedPerSec != nil {
			rate = fmt.Sprintf("%.1f/%.1f", sh.ProcessedPerSec["processor"], sh.ProcessedPerSec["sender"])
		}
		dl := fmt.Sprint(sh.DeadLetters)
		if sh.DeadLettersByClass != nil {
			dl += " (indexed: " + counts(sh.DeadLettersByClass) + ")"
		}
		dropped, redeliveries := "-", fmt.Sprintf("%d now", sh.NumRedelivered)
		if sh.Dropped != nil {
			dropped = counts(sh.Dropped)
		}
		if sh.Redeliveries != nil {
			redeliveries = fmt.Sprintf("%d (%d now)", *sh.Redeliveries, sh.NumRedelivered)
		}
		fmt.Fprintf(tw, "%d\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t\n", sh.Shard, sh.InboundPending, sh.OutboundPending, rate, dash(sh.DrainETA), dl, dropped, redeliveries)
	}
	for _, sh := range s.Shards {
		fmt.Fprintf(tw, "\nshard %d\tdead letters: %d\n", sh.Shard, sh.DeadLetters)
		fmt.Fprintln(tw, "  STREAM\tMESSAGES\tBYTES\t")
		for _, st := range sh.Streams {
			if st.Missing {
				fmt.Fprintf(tw, "  %s\tMISSING\t-\t\n", st.Name)
				continue
			}
			fmt.Fprintf(tw, "  %s\t%d\t%d\t\n", st.Name, st.Messages, st.Bytes)
		}
		fmt.Fprintln(tw, "  CONSUMER\tPENDING\tACK_PENDING\tREDELIVERED\tPROCESSED/S\tDRAIN_ETA\tDEAD_LETTERED\tDROPPED\t")
		for _, c := range sh.Consumers {
			name := c.Stream + "/" + c.Name
			if c.Missing {
				fmt.Fprintf(tw, "  %s\tMISSING\t-\t-\t-\t-\t-\t-\t\n", name)
				continue
			}
			rate, eta := "-", "-"
			if c.ProcessedPerSec != nil {
				rate, eta = fmt.Sprintf("%.1f", *c.ProcessedPerSec), c.DrainETA
			}
			if c.Paused {
				eta += " (paused)"
			}
			dead, dropped := "-", "-"
			if c.Counters != nil {
				dead, dropped = counts(c.Counters.DeadLettered), counts(c.Counters.Dropped)
			}
			fmt.Fprintf(tw, "  %s\t%d\t%d\t%d\t%s\t%s\t%s\t%s\t\n", name, c.NumPending, c.NumAckPending, c.NumRedelivered, rate, eta, dead, dropped)
		}
	}
	return tw.Flush()
}

// counts renders a by-reason map as "reason=n,..." in reason order; "0"
// when empty.
func counts(m map[string]uint64) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if m[k] > 0 {
			parts = append(parts, fmt.Sprintf("%s=%d", k, m[k]))
		}
	}
	if len(parts) == 0 {
		return "0"
	}
	return strings.Join(parts, ",")
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
