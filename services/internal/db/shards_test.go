package db_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/shardflow/shardflow/services/internal/db"
)

const mainDSN = "postgres://postgres@main:5432/shardflow?sslmode=disable"

func TestParseShardDSNs(t *testing.T) {
	spec := " 0=postgres://u:pw@pg-a:5432/shard0?sslmode=disable ; 2=host=pg-b,pg-c port=5432,5433 dbname=shard2 ;"
	d, err := db.ParseShardDSNs(spec, mainDSN, 4)
	if err != nil {
		t.Fatal(err)
	}
	want := map[int]string{
		0: "postgres://u:pw@pg-a:5432/shard0?sslmode=disable",
		1: mainDSN,
		2: "host=pg-b,pg-c port=5432,5433 dbname=shard2", // commas are the DSN's own
		3: mainDSN,
	}
	for shard, dsn := range want {
		if got := d.For(shard); got != dsn {
			t.Errorf("For(%d) = %q, want %q", shard, got, dsn)
		}
		if own := d.Own(shard); own != (dsn != mainDSN) {
			t.Errorf("Own(%d) = %v", shard, own)
		}
	}
	if d.Main() != mainDSN {
		t.Errorf("Main() = %q", d.Main())
	}
	if got := d.Distinct([]int{1, 0, 3, 2, 0}); !slices.Equal(got, []string{mainDSN, want[0], want[2]}) {
		t.Errorf("Distinct = %q", got)
	}
}

func TestParseShardDSNsEmptyKeepsEveryShardInMain(t *testing.T) {
	for _, spec := range []string{"", " ", ";"} {
		d, err := db.ParseShardDSNs(spec, mainDSN, 2)
		if err != nil {
			t.Fatalf("%q: %v", spec, err)
		}
		if d.For(0) != mainDSN || d.For(1) != mainDSN || d.Own(0) {
			t.Errorf("%q: shards not in the main database", spec)
		}
		if got := d.Distinct([]int{0, 1}); !slices.Equal(got, []string{mainDSN}) {
			t.Errorf("%q: Distinct = %q", spec, got)
		}
	}
}

func TestParseShardDSNsRefusesBadEntries(t *testing.T) {
	for _, c := range []struct {
		spec string
		want []string // each in the error
	}{
		{"postgres://u:secret@pg/x", []string{"entry 1", "want N=DSN", "postgres://u:xxxxx@pg/x"}},
		{"0=postgres://pg/a;shard1=postgres://pg/b", []string{"entry 2", `"shard1" before '='`}},
		{"0=", []string{"entry 1", "want N=DSN"}},
		{"=postgres://pg/a", []string{"entry 1", "want N=DSN"}},
		{"4=postgres://pg/a", []string{"entry 1", "shard 4 is not in the topology's shards 0..3"}},
		{"-1=postgres://pg/a", []string{"shard -1 is not in"}},
		{"1=postgres://pg/a; 1=postgres://pg/b", []string{"entry 2", "shard 1 is already given a database by entry 1", "list each shard once"}},
		{"0=postgres://u:secret@pg:notaport/a", []string{"entry 1", "DSN of shard 0 does not parse", "xxxxx"}},
		{"2=host=pg password=secret port=notaport", []string{"DSN of shard 2 does not parse", "password=xxxxx"}},
	} {
		_, err := db.ParseShardDSNs(c.spec, mainDSN, 4)
		if err == nil {
			t.Errorf("%q: accepted", c.spec)
			continue
		}
		msg := err.Error()
		if !strings.Contains(msg, db.EnvShardDSNs) {
			t.Errorf("%q: error %q does not name %s", c.spec, msg, db.EnvShardDSNs)
		}
		for _, w := range c.want {
			if !strings.Contains(msg, w) {
				t.Errorf("%q: error %q does not contain %q", c.spec, msg, w)
			}
		}
		if strings.Contains(msg, "secret") {
			t.Errorf("%q: error %q shows a password", c.spec, msg)
		}
	}
}
