package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/shardflow/shardflow/services/internal/accounts"
	"github.com/shardflow/shardflow/services/internal/dlq"
	"github.com/shardflow/shardflow/services/internal/service"
	"github.com/shardflow/shardflow/streams"
)

// EnvCrashAfterStep names the saga step after which the process exits with
// status 3. FOR TESTS ONLY (the integration suite's crash-resume checks).
const EnvCrashAfterStep = "SHARDFLOW_TEST_CRASH_AFTER_STEP"

// CrashExitCode is the exit status of the test crash hook.
const CrashExitCode = 3

// Config is the accounts service's configuration.
type Config struct {
	service.Common `kong:"embed"`

	AdminAddr     string        `name:"admin-addr" env:"SHARDFLOW_ADMIN_ADDR" default:"127.0.0.1:8081" help:"Address of the admin HTTP API."`
	AdminToken    string        `name:"admin-token" env:"SHARDFLOW_ADMIN_TOKEN" help:"Bearer token the admin API requires (required)."`
	DeletionGrace time.Duration `name:"deletion-grace" env:"SHARDFLOW_DELETION_GRACE" default:"2s" help:"Wait before the deletion saga's second purge."`
}

func main() {
	var cfg Config
	service.Main("accounts", "shardflow accounts service: admin API and account-deletion saga.", &cfg, func(ctx context.Context) error { return run(ctx, cfg) })
}

func run(ctx context.Context, cfg Config) error {
	if strings.TrimSpace(cfg.AdminToken) == "" {
		return errors.New("refusing to start: the admin API needs a bearer token; set SHARDFLOW_ADMIN_TOKEN or --admin-token")
	}
	crashStep, err := crashStepFromEnv()
	if err != nil {
		return err
	}
	env, err := service.Start(ctx, "accounts", cfg.Common, streams.KindAccounts, streams.KindInbound, streams.KindOutbound)
	if err != nil {
		return err
	}
	defer env.Close()

	pool, err := env.OpenDatabase(ctx)
	if err != nil {
		return err
	}
	shardPools, err := env.OpenAllShardDatabases(ctx, pool)
	if err != nil {
		return err
	}

	scfg := accounts.Config{
		Pool: pool, ShardPools: shardPools, JetStream: env.JS, Topology: env.Topo, AdminToken: cfg.AdminToken,
		DeletionGrace: cfg.DeletionGrace, Logger: env.Log,
		// A running saga holds one pooled connection (its advisory lock)
		// for seconds (the grace period): leave half the pool to the API.
		MaxConcurrentSagas: max(int(pool.Config().MaxConns)/2, 1), Meter: env.Meter, TracerProvider: env.Tel.TracerProvider,
	}
	if crashStep != "" {
		env.Log.Warn("TEST HOOK ACTIVE: the process exits after this deletion step", "env", EnvCrashAfterStep, "step", crashStep)
		scfg.AfterStep = crashAfter(env.Log, crashStep)
	}
	svc, err := accounts.New(ctx, scfg)
	if err != nil {
		return err
	}
	defer svc.Close()

	if n, err := svc.SyncDirectory(ctx); err != nil {
		return err
	} else if n > 0 {
		env.Log.Warn("directory entries written again from Postgres", "accounts", n)
	}
	if n, err := svc.CheckDeletions(ctx); err != nil {
		env.Log.Error("checking unfinished deletions", "err", err)
	} else if n > 0 {
		env.Log.Warn("unfinished deletions found at start-up", "deletions", n)
	}

	store := dlq.NewStore(pool)
	replayer, err := dlq.NewReplayer(dlq.ReplayerConfig{Store: store, JetStream: env.JS, Logger: env.Log, TracerProvider: env.Tel.TracerProvider})
	if err != nil {
		return err
	}
	admin, err := env.ServeHTTP("admin", cfg.AdminAddr, adminHandler(svc.Handler(), dlq.Handler(store, replayer, cfg.AdminToken)))
	if err != nil {
		return err
	}
	saga, err := env.RunStage(ctx, streams.StageAccounts, nil, svc.HandleEvent, nil)
	if err != nil {
		return err
	}
	var g service.Group
	g.Add("admin", admin)
	g.Add("deletion-saga", saga)
	return env.Serve(ctx, &g)
}

// adminHandler serves, on the one admin address, the accounts API and,
// under /v1/deadletters, the dead-letter API (package dlq: list, inspect,
// replay, drop). Both require the same bearer token.
func adminHandler(accountsAPI, deadLetters http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/v1/deadletters", deadLetters)
	mux.Handle("/v1/deadletters/", deadLetters)
	mux.Handle("/", accountsAPI)
	return mux
}

// crashStepFromEnv reads EnvCrashAfterStep, refusing an unknown step (a
// typo would otherwise silently disable the test's crash).
func crashStepFromEnv() (string, error) {
	step := strings.TrimSpace(os.Getenv(EnvCrashAfterStep))
	if step != "" && !slices.Contains(accounts.Steps, step) {
		return "", fmt.Errorf("%s=%q is not a deletion step (one of %s)", EnvCrashAfterStep, step, strings.Join(accounts.Steps, ", "))
	}
	return step, nil
}

// crashAfter is the test hook: exit right after step is recorded.
func crashAfter(log *slog.Logger, step string) func(context.Context, string, int64, string) error {
	return func(ctx context.Context, account string, generation int64, done string) error {
		if done == step {
			log.ErrorContext(ctx, "TEST HOOK: exiting after deletion step", "env", EnvCrashAfterStep,
				"step", step, "account", account, "generation", generation, "exit_code", CrashExitCode)
			os.Exit(CrashExitCode)
		}
		return nil
	}
}
