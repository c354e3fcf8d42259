package main

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/shardflow/shardflow/services/internal/db"
	"github.com/shardflow/shardflow/streams"
)

// ProvisionCmd is `sfctl provision`.
type ProvisionCmd struct {
	DryRun    bool     `name:"dry-run" help:"Change nothing; report what differs (exit status 1 if anything does)."`
	Consumers []string `name:"consumer" env:"SHARDFLOW_EXTRA_CONSUMERS" sep:"," help:"Also declare a team's consumer, name:kind[:max_deliver=N...] (repeatable; kinds accounts or deadletter only)."`
}

// provisionJSON is the --json form of a provisioning report.
type provisionJSON struct {
	DryRun  bool           `json:"dry_run"`
	Changes []changeJSON   `json:"changes"`
	Counts  map[string]int `json:"counts"`
	Error   string         `json:"error,omitempty"`
}

// changeJSON is one streams.Change.
type changeJSON struct {
	Stream   string         `json:"stream"`
	Consumer string         `json:"consumer,omitempty"`
	Action   streams.Action `json:"action"`
	Diff     []string       `json:"diff,omitempty"`
}

// Run provisions the topology and prints the report.
func (c *ProvisionCmd) Run(a *app) error {
	ctx := a.ctx
	topo := a.cli.Topology()
	for _, decl := range c.Consumers {
		spec, err := streams.ParseConsumerSpec(decl)
		if err != nil {
			return err
		}
		if !streams.SharedKind(spec.Kind) {
			return fmt.Errorf("provision: consumer %q reads %s, a work-queue stream that belongs to its stage; a team's consumer reads accounts or deadletter", spec.Name, spec.Kind)
		}
		topo.Consumers = append(topo.Consumers, spec)
	}
	topo = topo.WithDefaults()
	if err := topo.Validate(); err != nil {
		return err
	}
	nc, js, err := a.connect(ctx)
	if err != nil {
		return err
	}
	defer nc.Close()
	rep, perr := streams.Provision(ctx, js, topo, &streams.ProvisionOptions{DryRun: c.DryRun})
	if a.cli.JSON {
		out := provisionJSON{DryRun: c.DryRun, Changes: []changeJSON{}, Counts: map[string]int{}}
		for _, ch := range rep.Changes {
			out.Changes = append(out.Changes, changeJSON{Stream: ch.Stream, Consumer: ch.Consumer, Action: ch.Action, Diff: ch.Diff})
		}
		for _, act := range []streams.Action{streams.ActionCreated, streams.ActionUpdated, streams.ActionUnchanged, streams.ActionDrift} {
			out.Counts[string(act)] = rep.Count(act)
		}
		if perr != nil {
			out.Error = perr.Error()
		}
		if err := writeJSON(a.out, out); err != nil {
			return err
		}
	} else {
		fmt.Fprint(a.out, rep.String())
	}
	if perr != nil {
		return fmt.Errorf("provision: %w", perr)
	}
	if c.DryRun && rep.Count(streams.ActionDrift) > 0 {
		return fmt.Errorf("provision --dry-run: %d streams or consumers differ from the topology", rep.Count(streams.ActionDrift))
	}
	return nil
}

// MigrateCmd is `sfctl migrate`.
type MigrateCmd struct{}

// Run applies the pending migrations to --database-url.
func (c *MigrateCmd) Run(a *app) error {
	ctx := a.ctx
	if a.cli.DatabaseURL == "" {
		return errors.New("migrate: --database-url (SHARDFLOW_DATABASE_URL) is empty")
	}
	if err := db.Migrate(ctx, a.cli.DatabaseURL); err != nil {
		return err
	}
	fmt.Fprintln(a.out, "database schema up to date")
	return nil
}

func writeJSON(w interface{ Write([]byte) (int, error) }, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}
