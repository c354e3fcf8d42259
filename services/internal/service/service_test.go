package service

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"runtime/debug"
	"strings"
	"testing"
	"time"
)

func TestShardList(t *testing.T) {
	c := Common{Shards: 4}
	if got, err := c.ShardList(); err != nil || len(got) != 4 || got[3] != 3 {
		t.Fatalf("default: %v %v", got, err)
	}
	c.ConsumeShards = "0, 2"
	if got, err := c.ShardList(); err != nil || len(got) != 2 || got[1] != 2 {
		t.Fatalf("0,2: %v %v", got, err)
	}
	c.ConsumeShards = "4"
	if _, err := c.ShardList(); err == nil || !strings.Contains(err.Error(), "not a shard in 0..3") {
		t.Fatalf("out of range accepted: %v", err)
	}
}

func TestGroupStopsEveryActorWhenOneFails(t *testing.T) {
	var g Group
	stopped := make(chan struct{})
	g.Add("long", func(ctx context.Context) error { <-ctx.Done(); close(stopped); return nil })
	g.Add("failing", func(context.Context) error { return errors.New("boom") })
	err := g.Run(context.Background(), slog.New(slog.NewTextHandler(io.Discard, nil)), time.Second)
	if err == nil || !strings.Contains(err.Error(), "failing: boom") {
		t.Fatalf("want the failing actor's error, got %v", err)
	}
	select {
	case <-stopped:
	default:
		t.Fatal("the other actor was not stopped")
	}
}

func TestGroupReportsActorsThatDoNotStop(t *testing.T) {
	var g Group
	release := make(chan struct{})
	defer close(release)
	g.Add("stubborn", func(context.Context) error { <-release; return nil })
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := g.Run(ctx, slog.New(slog.NewTextHandler(io.Discard, nil)), 50*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "did not stop within") {
		t.Fatalf("got %v", err)
	}
}

func TestSetGCPercent(t *testing.T) {
	prev := debug.SetGCPercent(100)
	defer debug.SetGCPercent(prev)
	for v, want := range map[string]int{"50": 50, "400": 400, "off": -1} {
		if err := SetGCPercent(v); err != nil {
			t.Fatalf("SetGCPercent(%q): %v", v, err)
		}
		if got := debug.SetGCPercent(100); got != want {
			t.Errorf("SetGCPercent(%q) set %d, want %d", v, got, want)
		}
	}
	if err := SetGCPercent("fifty"); err == nil || !strings.Contains(err.Error(), `gc-percent (GOGC) "fifty"`) {
		t.Errorf("a bad value: %v, want an error naming it", err)
	}
}
