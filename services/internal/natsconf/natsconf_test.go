package natsconf_test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"

	"github.com/shardflow/shardflow/services/internal/natsconf"
	"github.com/shardflow/shardflow/streams"
)

// generate writes a set for shards shards into a temporary directory whose
// tls/ is also the run-time TLS directory, so the server can load it.
func generate(t *testing.T, shards int) (string, natsconf.Files) {
	t.Helper()
	dir := t.TempDir()
	files, err := natsconf.Generate(natsconf.Config{Shards: shards, TLSDir: filepath.Join(dir, "tls"), StoreDir: filepath.Join(dir, "js")})
	if err != nil {
		t.Fatal(err)
	}
	if err := files.Write(dir, ""); err != nil {
		t.Fatal(err)
	}
	return dir, files
}

func TestGeneratedConfigsParse(t *testing.T) {
	dir, files := generate(t, 4)
	topo := streams.Topology{Shards: 4}.WithDefaults()
	var m natsconf.Manifest
	mf, _ := files.Get(natsconf.ManifestFile)
	if err := json.Unmarshal(mf.Data, &m); err != nil {
		t.Fatal(err)
	}
	confs := []string{natsconf.SingleFile}
	for _, s := range m.Servers {
		confs = append(confs, s.Config)
	}
	if len(confs) != 4 {
		t.Fatalf("want 3 node configs and the single one, got %v", confs)
	}
	for _, name := range confs {
		t.Run(name, func(t *testing.T) {
			opts, err := server.ProcessConfigFile(filepath.Join(dir, name))
			if err != nil {
				t.Fatalf("nats-server rejects %s: %v", name, err)
			}
			if int(opts.MaxPayload) != topo.RequiredMaxPayload() {
				t.Errorf("max_payload %d, want the topology's %d", opts.MaxPayload, topo.RequiredMaxPayload())
			}
			if !opts.JetStream || !opts.SyncAlways {
				t.Errorf("jetstream %v sync always %v, want both", opts.JetStream, opts.SyncAlways)
			}
			if opts.NoAuthUser != "" {
				t.Errorf("no_auth_user is set (%q)", opts.NoAuthUser)
			}
			if opts.SystemAccount != natsconf.SystemAccount {
				t.Errorf("system account %q", opts.SystemAccount)
			}
			if len(opts.Nkeys) != len(natsconf.Services)+1 || len(opts.Users) != 0 {
				t.Errorf("%d nkey users and %d password users, want %d nkey users only", len(opts.Nkeys), len(opts.Users), len(natsconf.Services)+1)
			}
			if !slices.Contains(opts.Tags, "sync:always") {
				t.Errorf("server tags %v lack sync:always", opts.Tags)
			}
			if name == natsconf.SingleFile {
				if opts.TLSConfig != nil || opts.Cluster.Port != 0 {
					t.Errorf("the single node has TLS or a cluster")
				}
				return
			}
			if opts.TLSConfig == nil || opts.TLSConfig.ClientAuth != tls.RequireAndVerifyClientCert || opts.TLSConfig.MinVersion != tls.VersionTLS13 {
				t.Fatalf("client TLS must verify client certificates with TLS 1.3 at least: %+v", opts.TLSConfig)
			}
			if opts.Cluster.TLSConfig == nil || len(opts.Routes) != 3 || opts.Cluster.Name != natsconf.DefaultClusterName {
				t.Errorf("cluster: tls %v, %d routes, name %q", opts.Cluster.TLSConfig != nil, len(opts.Routes), opts.Cluster.Name)
			}
			if opts.JetStreamUniqueTag != "az:" {
				t.Errorf("unique_tag %q", opts.JetStreamUniqueTag)
			}
		})
	}

	// The users in the config are the manifest's public keys, and each seed
	// file holds the matching private key.
	for name, u := range m.Users {
		seed, err := os.ReadFile(filepath.Join(dir, u.SeedFile))
		if err != nil {
			t.Fatal(err)
		}
		kp, err := nkeys.FromSeed([]byte(strings.TrimSpace(string(seed))))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if pub, _ := kp.PublicKey(); pub != u.NKey {
			t.Errorf("%s: seed's public key %s, config has %s", name, pub, u.NKey)
		}
		if fi, _ := os.Stat(filepath.Join(dir, u.SeedFile)); fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: seed file mode %v, want 0600", name, fi.Mode().Perm())
		}
	}

	// Certificates: every server and client certificate chains to the CA.
	pool := x509.NewCertPool()
	ca, _ := os.ReadFile(filepath.Join(dir, natsconf.CAFile))
	if !pool.AppendCertsFromPEM(ca) {
		t.Fatal("ca.pem holds no certificate")
	}
	for _, s := range m.Servers {
		if _, err := tls.LoadX509KeyPair(filepath.Join(dir, s.Cert), filepath.Join(dir, s.Key)); err != nil {
			t.Fatalf("%s: %v", s.Name, err)
		}
		c := leaf(t, filepath.Join(dir, s.Cert))
		if _, err := c.Verify(x509.VerifyOptions{Roots: pool, DNSName: s.Host, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Errorf("%s: %v", s.Name, err)
		}
	}
	for name, u := range m.Users {
		c := leaf(t, filepath.Join(dir, u.ClientCert))
		if _, err := c.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func leaf(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(path, strings.TrimSuffix(path, ".pem")+"-key.pem")
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestPermissionRules checks the rules every user's permissions must keep,
// whatever the number of shards.
func TestPermissionRules(t *testing.T) {
	for _, shards := range []int{1, 4, 7} {
		topo := streams.Topology{Shards: shards}.WithDefaults()
		table, err := natsconf.Table(topo)
		if err != nil {
			t.Fatal(err)
		}
		for _, svc := range natsconf.Services {
			p := table[svc]
			if !slices.Contains(p.PublishDeny, "$JS.API.STREAM.DELETE.>") {
				t.Errorf("%d shards, %s: STREAM.DELETE is not denied", shards, svc)
			}
			if (svc == natsconf.Accounts) == slices.Contains(p.PublishDeny, "$JS.API.STREAM.PURGE.>") {
				t.Errorf("%d shards, %s: purge deny %v (only accounts may purge)", shards, svc, p.PublishDeny)
			}
			if p.SubscribeAllow[0] != natsconf.InboxPrefix(svc)+".>" {
				t.Errorf("%s: subscribe %v does not start with its own inbox", svc, p.SubscribeAllow)
			}
			for _, s := range p.SubscribeAllow {
				if strings.HasPrefix(s, "_INBOX") && s != natsconf.InboxPrefix(svc)+".>" {
					t.Errorf("%s may subscribe to %s", svc, s)
				}
			}
			for _, s := range p.PublishAllow {
				toks := strings.Split(s, ".")
				for i, tok := range toks {
					// Whole-token wildcards only; > only last.
					if (strings.ContainsAny(tok, "*>") && len(tok) != 1) || (tok == ">" && i != len(toks)-1) {
						t.Errorf("%s: %q is not a valid NATS pattern", svc, s)
					}
				}
				if s == ">" || strings.HasPrefix(s, "$JS.API.>") || strings.HasPrefix(s, "$JS.API.STREAM.DELETE") {
					t.Errorf("%s: %q is too wide", svc, s)
				}
				if strings.HasPrefix(s, "$JS.API.STREAM.PURGE.") && svc != natsconf.Accounts {
					t.Errorf("%s may purge (%s)", svc, s)
				}
				if (strings.HasPrefix(s, "$JS.API.STREAM.CREATE.") || strings.HasPrefix(s, "$JS.API.STREAM.UPDATE.")) && svc != natsconf.Provisioner {
					t.Errorf("%s may create or update streams (%s)", svc, s)
				}
				if strings.HasPrefix(s, "$JS.API.CONSUMER.CREATE.") && svc != natsconf.Provisioner && !strings.Contains(s, "KV_"+streams.DirectoryBucket) {
					t.Errorf("%s may create consumers on the topology's streams (%s)", svc, s)
				}
			}
			// Per-shard expansion: a subject of shard N (one past the
			// topology) is never allowed.
			for _, s := range p.PublishAllow {
				if strings.Contains(s, "."+strconv.Itoa(shards)+".") || strings.HasSuffix(s, "_"+strconv.Itoa(shards)) || strings.Contains(s, "_"+strconv.Itoa(shards)+".") {
					t.Errorf("%d shards, %s: %q names shard %d", shards, svc, s, shards)
				}
			}
		}
		// Ingest publishes inbound data only: four tokens, no held copies.
		for _, s := range table[natsconf.Ingest].PublishAllow {
			if strings.HasPrefix(s, "inbound.") && strings.Count(s, ".") != 3 {
				t.Errorf("ingest may publish %q", s)
			}
			if strings.HasPrefix(s, "outbound.") || strings.HasPrefix(s, "deadletter.") || strings.HasPrefix(s, "accounts.") {
				t.Errorf("ingest may publish %q", s)
			}
		}
	}
	if _, _, _, err := natsconf.Permissions("nobody", 4); err == nil {
		t.Error("an unknown service has permissions")
	}
}

func TestGenerateRefusesBadNodes(t *testing.T) {
	for _, n := range []int{1, 2, 4} {
		if _, err := natsconf.Generate(natsconf.Config{Nodes: n}); err == nil {
			t.Errorf("Nodes %d accepted", n)
		}
	}
	if _, err := natsconf.Generate(natsconf.Config{Hosts: []string{"a", "b"}}); err == nil {
		t.Error("2 hosts for 3 nodes accepted")
	}
}

func TestCheckOverwrite(t *testing.T) {
	dir, _ := generate(t, 2)
	if err := natsconf.CheckOverwrite(dir); err == nil {
		t.Error("existing seeds not detected")
	}
	if err := natsconf.CheckOverwrite(t.TempDir()); err != nil {
		t.Error(err)
	}
}

// TestUpdateKeepsKeys: growing the topology (a shard more, a declared
// consumer) with Keep reuses every seed and the CA, creates only the new
// user's seed and certificate, and the result still parses and verifies.
func TestUpdateKeepsKeys(t *testing.T) {
	dir, files := generate(t, 4)
	var before natsconf.Manifest
	mf, _ := files.Get(natsconf.ManifestFile)
	if err := json.Unmarshal(mf.Data, &before); err != nil {
		t.Fatal(err)
	}
	keep, err := natsconf.LoadExisting(dir, "")
	if err != nil || keep == nil {
		t.Fatalf("load existing: %v", err)
	}
	spec, err := streams.ParseConsumerSpec("auditsink:accounts")
	if err != nil {
		t.Fatal(err)
	}
	files, err = natsconf.Generate(natsconf.Config{Shards: 5, TLSDir: filepath.Join(dir, "tls"), StoreDir: filepath.Join(dir, "js"), Keep: keep, Consumers: []streams.ConsumerSpec{spec}})
	if err != nil {
		t.Fatal(err)
	}
	var secrets []string
	for _, f := range files {
		if f.Secret {
			secrets = append(secrets, f.Path)
		}
		if f.Path == natsconf.CAFile {
			t.Error("the CA was replaced")
		}
	}
	slices.Sort(secrets)
	if want := []string{natsconf.SeedFile("auditsink"), natsconf.KeyFile("auditsink")}; !slices.Equal(secrets, want) {
		t.Errorf("new secrets %v, want only %v", secrets, want)
	}
	if err := files.Write(dir, ""); err != nil {
		t.Fatal(err)
	}
	var after natsconf.Manifest
	mf, _ = files.Get(natsconf.ManifestFile)
	if err := json.Unmarshal(mf.Data, &after); err != nil {
		t.Fatal(err)
	}
	for name, u := range before.Users {
		if after.Users[name].NKey != u.NKey {
			t.Errorf("%s's NKey changed", name)
		}
	}
	if after.Shards != 5 || !slices.Contains(after.Users[natsconf.Ingest].PublishAllow, "inbound.4.*.*") {
		t.Errorf("the update did not grow the permissions to shard 4")
	}
	if _, ok := after.Users["auditsink"]; !ok {
		t.Error("no user for the declared consumer")
	}
	for _, s := range after.Servers {
		if _, err := server.ProcessConfigFile(filepath.Join(dir, s.Config)); err != nil {
			t.Fatalf("%s after the update: %v", s.Config, err)
		}
	}
	pool := x509.NewCertPool()
	ca, _ := os.ReadFile(filepath.Join(dir, natsconf.CAFile))
	pool.AppendCertsFromPEM(ca)
	if _, err := leaf(t, filepath.Join(dir, natsconf.CertFile("auditsink"))).Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("the new user's certificate does not chain to the kept CA: %v", err)
	}
}
