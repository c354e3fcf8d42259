package integration

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"go/parser"
	"go/token"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
	"go.yaml.in/yaml/v3"

	"github.com/shardflow/shardflow/integration/harness"
	"github.com/shardflow/shardflow/streams"
)

// The deploy suite checks the production shape in deploy/: the NATS configs
// `sfctl nats-config` generates are accepted by nats-server and form a real
// TLS cluster that takes the topology at R3 with placement tags; the
// committed example is current and consistent with its secrets and the Helm
// values; and the compose file, the Kubernetes manifests and the Dockerfile
// refer only to things that exist.

func deployDir() string { return filepath.Join(harness.RepoRoot(), "deploy") }

// TestDeployGeneratedConfigsParse: every config generated for 4 shards (the
// three cluster nodes and the single node) is accepted by the embedded
// server's config parser, with the settings production relies on.
func TestDeployGeneratedConfigsParse(t *testing.T) {
	g := harness.GenerateNATSConfig(t, func(out string) []string {
		return []string{"--shards", "4", "--tls-dir", filepath.Join(out, "tls"), "--store-dir", filepath.Join(out, "js")}
	})
	topo := streams.Topology{Shards: 4}.WithDefaults()
	if len(g.Manifest.Servers) != 3 {
		t.Fatalf("%d cluster nodes generated, want 3", len(g.Manifest.Servers))
	}
	for _, srv := range append(g.Manifest.Servers, g.Manifest.Single) {
		t.Run(srv.Config, func(t *testing.T) {
			checkServerConfig(t, g.Path(srv.Config), topo, srv.Config != g.Manifest.Single.Config, len(g.Manifest.Users)+1)
		})
	}
}

// checkServerConfig parses a config and checks it.
func checkServerConfig(t *testing.T, path string, topo streams.Topology, clustered bool, users int) *server.Options {
	t.Helper()
	opts, err := server.ProcessConfigFile(path)
	if err != nil {
		t.Fatalf("nats-server rejects %s: %v", path, err)
	}
	if int(opts.MaxPayload) != topo.RequiredMaxPayload() {
		t.Errorf("max_payload %d, want the topology's RequiredMaxPayload %d", opts.MaxPayload, topo.RequiredMaxPayload())
	}
	if !opts.JetStream || !opts.SyncAlways {
		t.Errorf("jetstream %v, sync_interval always %v: want both", opts.JetStream, opts.SyncAlways)
	}
	if opts.NoAuthUser != "" || len(opts.Users) != 0 || len(opts.Nkeys) != users {
		t.Errorf("auth: no_auth_user %q, %d password users, %d nkey users (want none, none, %d)", opts.NoAuthUser, len(opts.Users), len(opts.Nkeys), users)
	}
	if opts.SystemAccount != "SYS" {
		t.Errorf("system_account %q", opts.SystemAccount)
	}
	if !slices.Contains(opts.Tags, "sync:always") || !slices.Contains(opts.Tags, "cell:0") {
		t.Errorf("server_tags %v", opts.Tags)
	}
	if opts.HTTPHost != "127.0.0.1" && opts.HTTPPort > 0 {
		t.Errorf("monitoring listens on %s, want a private address", opts.HTTPHost)
	}
	if !clustered {
		if opts.TLSConfig != nil || opts.Cluster.Port != 0 || len(opts.Routes) > 0 {
			t.Errorf("the single-node config has TLS or a cluster")
		}
		return opts
	}
	if opts.TLSConfig == nil || opts.TLSConfig.ClientAuth != tls.RequireAndVerifyClientCert || opts.TLSConfig.MinVersion != tls.VersionTLS13 {
		t.Errorf("client TLS must require verified client certificates and TLS 1.3")
	}
	if opts.Cluster.TLSConfig == nil || opts.Cluster.Name == "" || len(opts.Routes) != 3 {
		t.Errorf("cluster: TLS %v, name %q, %d routes", opts.Cluster.TLSConfig != nil, opts.Cluster.Name, len(opts.Routes))
	}
	if opts.JetStreamUniqueTag != "az:" {
		t.Errorf("unique_tag %q, want az:", opts.JetStreamUniqueTag)
	}
	return opts
}

// TestDeployGeneratedCluster starts a real 3-node cluster in this process
// from generated configs (free ports on 127.0.0.1, temporary store
// directories, the generated TLS certificates): it forms, refuses a client
// without a certificate, and takes the provisioner's streams.Provision at
// R3 with the generated placement tags; a service user then publishes into
// a replicated stream over TLS.
func TestDeployGeneratedCluster(t *testing.T) {
	var nodePorts []string
	for range 3 {
		nodePorts = append(nodePorts, fmt.Sprintf("%d:%d:%d", harness.FreePort(t), harness.FreePort(t), harness.FreePort(t)))
	}
	g := harness.GenerateNATSConfig(t, func(out string) []string {
		args := []string{"--shards", "4", "--listen-host", "127.0.0.1", "--tls-dir", filepath.Join(out, "tls")}
		for i := range 3 {
			args = append(args, "--host", "127.0.0.1", "--server-name", fmt.Sprintf("it-n%d", i+1), "--node-ports", nodePorts[i])
		}
		return args
	})
	c := harness.StartConfiguredCluster(t, g)
	topo := streams.Topology{Shards: 4, Replicas: 3, PlacementTags: g.PlacementTags()}.WithDefaults()

	// TLS with verify: a client with the right NKey but no certificate is
	// turned away.
	if nc, err := nats.Connect(c.ClientURLs(), append(g.UserOptions(t, "provisioner", false), nats.RootCAs(g.Path("tls/ca.pem")), nats.MaxReconnects(0))...); err == nil {
		nc.Close()
		t.Fatal("a client without a certificate connected to a verify: true cluster")
	}

	connect := func(user string) (*nats.Conn, jetstream.JetStream) {
		nc, err := nats.Connect(c.ClientURLs(), append(g.UserOptions(t, user, true), nats.MaxReconnects(-1))...)
		if err != nil {
			t.Fatalf("connect as %s over TLS: %v", user, err)
		}
		t.Cleanup(nc.Close)
		if !nc.TLSRequired() {
			t.Fatalf("%s connected without TLS", user)
		}
		js, err := jetstream.New(nc, jetstream.WithDefaultTimeout(20*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		return nc, js
	}
	_, js := connect("provisioner")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// A cluster that has just formed can still count a peer as offline for
	// placement (err_code 10005) on a loaded machine; provisioning is
	// idempotent, so the provisioner runs it again, as an operator would.
	created := 0
	harness.Eventually(t, time.Minute, func() error {
		rep, err := streams.Provision(ctx, js, topo, nil)
		created += rep.Count(streams.ActionCreated)
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && apiErr.ErrorCode == 10005 {
			return fmt.Errorf("provision at R3: %w", err)
		}
		if err != nil {
			t.Fatalf("provision at R3 on the generated cluster: %v\n%s", err, rep)
		}
		return nil
	})
	if n := created; n != len(topo.StreamNames())+topo.Shards*len(topo.Consumers) {
		t.Fatalf("created %d streams and consumers, want each once", n)
	}
	for _, name := range topo.StreamNames() {
		s, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		info := s.CachedInfo()
		if info.Config.Replicas != 3 || info.Config.Placement == nil || !slices.Equal(info.Config.Placement.Tags, []string{"cell:0", "sync:always"}) {
			t.Fatalf("%s: replicas %d, placement %+v", name, info.Config.Replicas, info.Config.Placement)
		}
		if info.Cluster == nil || info.Cluster.Leader == "" || len(info.Cluster.Replicas) != 2 {
			t.Fatalf("%s: cluster info %+v", name, info.Cluster)
		}
	}
	// The data path over TLS: ingest publishes, R3 acknowledges.
	_, ijs := connect("ingest")
	ack, err := ijs.PublishMsg(ctx, &nats.Msg{Subject: "inbound.2.acme.track", Data: []byte(`{}`), Header: nats.Header{jetstream.MsgIDHeader: []string{"acme:1:tls"}}})
	if err != nil || ack.Stream != "INBOUND_2" {
		t.Fatalf("publish as ingest on the cluster: %v %+v", err, ack)
	}
	t.Logf("3-node TLS cluster: %d streams and %d consumers at R3 with placement %v", len(topo.StreamNames()), topo.Shards*len(topo.Consumers), topo.PlacementTags(0))
}

// TestDeployCommittedNATSExample: deploy/nats is the generator's current
// output for 4 shards (its permissions equal a fresh run's), parses with
// its example secrets, its seeds match its public keys, no secret lives
// outside example-secrets, and the Helm values carry the same accounts.
func TestDeployCommittedNATSExample(t *testing.T) {
	dir := filepath.Join(deployDir(), "nats")
	committed, err := harness.LoadNATSConfigSet(dir)
	if err != nil {
		t.Fatal(err)
	}
	topo := streams.Topology{Shards: committed.Manifest.Shards}.WithDefaults()
	if committed.Manifest.Shards != 4 || committed.Manifest.MaxPayload != topo.RequiredMaxPayload() {
		t.Fatalf("deploy/nats: %d shards, max_payload %d; want 4 and %d (regenerate it, see deploy/nats/README.md)", committed.Manifest.Shards, committed.Manifest.MaxPayload, topo.RequiredMaxPayload())
	}
	fresh := harness.GenerateNATSConfig(t, func(string) []string { return []string{"--shards", "4"} })
	for name, u := range fresh.Manifest.Users {
		c, ok := committed.Manifest.Users[name]
		if !ok || !slices.Equal(c.PublishAllow, u.PublishAllow) || !slices.Equal(c.PublishDeny, u.PublishDeny) || !slices.Equal(c.SubscribeAllow, u.SubscribeAllow) {
			t.Errorf("deploy/nats is stale: user %s's permissions differ from the generator's (regenerate, see deploy/nats/README.md)", name)
		}
	}
	for _, f := range []string{"nats-1.conf", "nats-2.conf", "nats-3.conf", "nats-single.conf", "accounts.conf"} {
		a, _ := os.ReadFile(filepath.Join(dir, f))
		b, _ := os.ReadFile(fresh.Path(f))
		if normalizeGenerated(a) != normalizeGenerated(b) {
			t.Errorf("deploy/nats/%s differs from the generator's output beyond keys (regenerate)", f)
		}
	}

	// Parse the example as the servers will see it: certificates and keys
	// together in one TLS directory.
	tmp := t.TempDir()
	tlsDir := filepath.Join(tmp, "tls")
	copyTree(t, filepath.Join(dir, "tls"), tlsDir)
	copyTree(t, filepath.Join(dir, "example-secrets", "tls"), tlsDir)
	for _, f := range []string{"nats-1.conf", "nats-2.conf", "nats-3.conf", "nats-single.conf", "accounts.conf"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		b = bytes.ReplaceAll(b, []byte("/etc/nats/tls"), []byte(tlsDir))
		if err := os.WriteFile(filepath.Join(tmp, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"nats-1.conf", "nats-2.conf", "nats-3.conf", "nats-single.conf"} {
		t.Run(f, func(t *testing.T) {
			opts := checkServerConfig(t, filepath.Join(tmp, f), topo, f != "nats-single.conf", len(committed.Manifest.Users)+1)
			if f != "nats-single.conf" && opts.ServerName != strings.TrimSuffix(f, ".conf") {
				t.Errorf("server_name %q in %s", opts.ServerName, f)
			}
		})
	}

	// Seeds ↔ public keys, and where secrets live.
	for name, u := range committed.Manifest.Users {
		checkSeed(t, filepath.Join(dir, "example-secrets", u.SeedFile), u.NKey, name)
	}
	checkSeed(t, filepath.Join(dir, "example-secrets", committed.Manifest.SystemUser.SeedFile), committed.Manifest.SystemUser.NKey, "sys")
	seedRe := regexp.MustCompile(`\bS[UAONC][A-Z2-7]{56}\b`)
	_ = filepath.WalkDir(deployDir(), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if strings.HasPrefix(p, filepath.Join(dir, "example-secrets")+string(filepath.Separator)) {
			return nil
		}
		b, _ := os.ReadFile(p)
		if bytes.Contains(b, []byte("PRIVATE KEY")) || seedRe.Match(b) {
			t.Errorf("%s holds a private key or an NKey seed: secrets belong in deploy/nats/example-secrets", p)
		}
		return nil
	})
	if b, err := os.ReadFile(filepath.Join(dir, "example-secrets", "README.md")); err != nil || !strings.Contains(string(b), "NEVER for production") {
		t.Errorf("deploy/nats/example-secrets/README.md must say the secrets are examples, never for production")
	}

	// The Helm values embed the same accounts.conf and size limit.
	var values map[string]any
	readYAML(t, filepath.Join(deployDir(), "k8s", "nats-values.yaml"), &values)
	accounts, _ := os.ReadFile(filepath.Join(dir, "accounts.conf"))
	data := dig(values, "configMap", "merge", "data", "shardflow-accounts.conf")
	if s, _ := data.(string); strings.TrimSpace(s) != strings.TrimSpace(string(accounts)) {
		t.Errorf("nats-values.yaml's shardflow-accounts.conf differs from deploy/nats/accounts.conf (regenerate both)")
	}
	if v := dig(values, "config", "merge", "max_payload"); v != topo.RequiredMaxPayload() {
		t.Errorf("nats-values.yaml max_payload %v, want %d", v, topo.RequiredMaxPayload())
	}
	if v := dig(values, "config", "merge", "00$include"); v != "shardflow-accounts.conf" {
		t.Errorf("nats-values.yaml does not include the accounts config: %v", v)
	}
	if v := dig(values, "config", "jetstream", "merge", "sync_interval"); v != "always" {
		t.Errorf("nats-values.yaml sync_interval %v", v)
	}
	if v := dig(values, "config", "cluster", "replicas"); v != 3 {
		t.Errorf("nats-values.yaml cluster replicas %v", v)
	}
	if dig(values, "config", "nats", "tls", "ca") == nil || dig(values, "config", "jetstream", "fileStore", "pvc", "enabled") != true {
		t.Errorf("nats-values.yaml lacks client TLS verification or file storage on PVCs")
	}
}

// normalizeGenerated drops what differs between two generator runs: keys.
func normalizeGenerated(b []byte) string {
	return regexp.MustCompile(`\bU[A-Z2-7]{55}\b`).ReplaceAllString(string(b), "U…")
}

func checkSeed(t *testing.T, path, pub, who string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%s: %v", who, err)
	}
	kp, err := nkeys.FromSeed(bytes.TrimSpace(b))
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if p, _ := kp.PublicKey(); p != pub {
		t.Errorf("%s: the seed's public key %s is not the config's %s", who, p, pub)
	}
}

// TestDeployCompose: deploy/compose.yaml parses and refers only to what
// exists — services, files, secrets, volumes, NATS nodes, ports.
func TestDeployCompose(t *testing.T) {
	var doc map[string]any
	readYAML(t, filepath.Join(deployDir(), "compose.yaml"), &doc)
	services, _ := doc["services"].(map[string]any)
	if len(services) == 0 {
		t.Fatal("compose.yaml has no services")
	}
	secrets, _ := doc["secrets"].(map[string]any)
	volumes, _ := doc["volumes"].(map[string]any)
	mains := mainPackages(t)
	nodes, err := harness.LoadNATSConfigSet(filepath.Join(deployDir(), "nats"))
	if err != nil {
		t.Fatal(err)
	}

	natsSvc := map[string]int{} // NATS service → client port
	for name, v := range services {
		svc := v.(map[string]any)
		if img, _ := svc["image"].(string); strings.HasPrefix(img, "nats:") {
			natsSvc[name] = 0
			for _, s := range nodes.Manifest.Servers {
				if s.Host == name {
					natsSvc[name] = s.ClientPort
				}
			}
			if natsSvc[name] == 0 {
				t.Errorf("NATS service %s is none of the generated config's hosts (routes would not resolve)", name)
			}
		}
	}
	if len(natsSvc) != 3 {
		t.Fatalf("compose runs %d NATS nodes, want 3", len(natsSvc))
	}

	built := map[string]bool{}
	for name, v := range services {
		svc := v.(map[string]any)
		img, _ := svc["image"].(string)
		if img == "" {
			t.Errorf("%s: no image", name)
		}
		// Build: the Dockerfile with a SERVICE that has a main package.
		if b, ok := svc["build"].(map[string]any); ok {
			if b["dockerfile"] != "deploy/Dockerfile" || b["context"] != ".." {
				t.Errorf("%s: build %v", name, b)
			}
			arg, _ := dig(b, "args", "SERVICE").(string)
			if !mains[arg] {
				t.Errorf("%s: build arg SERVICE=%q is no main package under services/", name, arg)
			}
			if !strings.HasPrefix(img, "shardflow/"+arg+":") {
				t.Errorf("%s: image %s for SERVICE=%s", name, img, arg)
			}
			built[arg] = true
		}
		// depends_on targets exist; conditions make sense.
		switch d := svc["depends_on"].(type) {
		case []any:
			for _, x := range d {
				if _, ok := services[x.(string)]; !ok {
					t.Errorf("%s depends on %v, which does not exist", name, x)
				}
			}
		case map[string]any:
			for target, x := range d {
				ts, ok := services[target].(map[string]any)
				if !ok {
					t.Errorf("%s depends on %s, which does not exist", name, target)
					continue
				}
				switch cond := dig(x, "condition"); cond {
				case "service_healthy":
					if ts["healthcheck"] == nil {
						t.Errorf("%s waits for %s to be healthy, which has no healthcheck", name, target)
					}
				case "service_completed_successfully":
					if ts["restart"] != "no" {
						t.Errorf("%s waits for %s to complete, which is not a one-shot", name, target)
					}
				case "service_started", nil:
				default:
					t.Errorf("%s: depends_on %s: condition %v", name, target, cond)
				}
			}
		}
		// Mounted files exist; named volumes are declared.
		for _, x := range asList(svc["volumes"]) {
			src := strings.SplitN(x.(string), ":", 2)[0]
			if strings.HasPrefix(src, ".") {
				if _, err := os.Stat(filepath.Join(deployDir(), src)); err != nil {
					t.Errorf("%s mounts %s: %v", name, src, err)
				}
			} else if _, ok := volumes[src]; !ok {
				t.Errorf("%s mounts volume %s, which is not declared", name, src)
			}
		}
		var mySecrets []string
		for _, x := range asList(svc["secrets"]) {
			s := x.(string)
			mySecrets = append(mySecrets, s)
			def, ok := secrets[s].(map[string]any)
			if !ok {
				t.Errorf("%s uses secret %s, which is not declared", name, s)
				continue
			}
			if _, err := os.Stat(filepath.Join(deployDir(), def["file"].(string))); err != nil {
				t.Errorf("secret %s: %v", s, err)
			}
		}
		env, _ := svc["environment"].(map[string]any)
		for k, v := range env {
			val := fmt.Sprint(v)
			switch {
			case k == "SHARDFLOW_NATS_URL":
				for _, u := range strings.Split(val, ",") {
					pu, err := url.Parse(u)
					if err != nil {
						t.Errorf("%s: %s: %v", name, u, err)
						continue
					}
					port, ok := natsSvc[pu.Hostname()]
					if !ok || strconv.Itoa(port) != pu.Port() {
						t.Errorf("%s: SHARDFLOW_NATS_URL names %s, not a NATS node's client port", name, pu.Host)
					}
				}
			case k == "OTEL_EXPORTER_OTLP_ENDPOINT":
				pu, _ := url.Parse(val)
				if j, ok := services[pu.Hostname()].(map[string]any); !ok || !slices.Contains(asStrings(j["expose"]), pu.Port()) {
					t.Errorf("%s: OTLP endpoint %s is no service exposing that port", name, val)
				}
			case k == "SHARDFLOW_NATS_NKEY_FILE" || (k == "SHARDFLOW_NATS_TLS_KEY" && strings.HasPrefix(val, "/run/secrets/")):
				if s := strings.TrimPrefix(val, "/run/secrets/"); !slices.Contains(mySecrets, s) {
					t.Errorf("%s: %s=%s is not one of its secrets %v", name, k, val, mySecrets)
				}
			}
		}
		// Its own NATS user: the seed file and the inbox prefix agree.
		if nk, ok := env["SHARDFLOW_NATS_NKEY_FILE"].(string); ok {
			s, _ := secrets[strings.TrimPrefix(nk, "/run/secrets/")].(map[string]any)
			user := strings.TrimSuffix(filepath.Base(fmt.Sprint(s["file"])), ".nk")
			if env["SHARDFLOW_NATS_INBOX_PREFIX"] != "_INBOX_"+user {
				t.Errorf("%s connects as %s with inbox prefix %v", name, user, env["SHARDFLOW_NATS_INBOX_PREFIX"])
			}
			if _, ok := nodes.Manifest.Users[user]; !ok {
				t.Errorf("%s connects as %s, not a user of the NATS config", name, user)
			}
		}
		// Published ports are ports the container listens on.
		for _, x := range asList(svc["ports"]) {
			parts := strings.Split(fmt.Sprint(x), ":")
			cport := parts[len(parts)-1]
			if _, ok := natsSvc[name]; ok {
				if cport != strconv.Itoa(natsSvc[name]) {
					t.Errorf("%s publishes %s, not its client port", name, cport)
				}
				continue
			}
			if strings.HasPrefix(img, "shardflow/") {
				listens := false
				for k, v := range env {
					if strings.HasSuffix(k, "_ADDR") && strings.HasSuffix(fmt.Sprint(v), ":"+cport) {
						listens = true
					}
				}
				if !listens {
					t.Errorf("%s publishes port %s, which none of its *_ADDR settings listens on", name, cport)
				}
			}
		}
	}
	// Every binary has an image: built by the compose file, or its image
	// build documented elsewhere under deploy/ (a fragment of its own, as the
	// example consumer has). stack is the development stack, not deployed.
	var docs []byte
	_ = filepath.WalkDir(deployDir(), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && !strings.Contains(p, "example-secrets") {
			b, _ := os.ReadFile(p)
			docs = append(docs, b...)
		}
		return nil
	})
	for m := range mains {
		if !built[m] && m != "stack" && !bytes.Contains(docs, []byte("--build-arg SERVICE="+m+" ")) {
			t.Errorf("services/%s is a main package no compose file builds and no file under deploy/ builds an image of (--build-arg SERVICE=%s)", m, m)
		}
	}
	for _, stage := range []string{"processor", "sender"} {
		if r := dig(services[stage], "deploy", "replicas"); r == nil || r.(int) < 2 {
			t.Errorf("%s: deploy.replicas %v, want at least 2", stage, r)
		}
	}
	if cmd := asStrings(dig(services["provision"], "command")); !slices.Equal(cmd, []string{"provision", "--replicas", "3"}) {
		t.Errorf("provision command %v", cmd)
	}
	if cmd := asStrings(dig(services["migrate"], "command")); !slices.Equal(cmd, []string{"migrate"}) {
		t.Errorf("migrate command %v", cmd)
	}
	if img, _ := dig(services["jaeger"], "image").(string); img != "jaegertracing/jaeger:2" {
		t.Errorf("jaeger image %q", img)
	}
	if img, _ := dig(services["postgres"], "image").(string); img != "postgres:15" {
		t.Errorf("postgres image %q", img)
	}
	checkMonitoringFiles(t)
}

// checkMonitoringFiles: the alert rules and the dashboard compose and the
// kustomization load parse.
func checkMonitoringFiles(t *testing.T) {
	t.Helper()
	var rules map[string]any
	readYAML(t, filepath.Join(deployDir(), "prometheus", "alerts.yaml"), &rules)
	if _, ok := rules["groups"]; !ok {
		t.Error("deploy/prometheus/alerts.yaml has no rule groups")
	}
	b, err := os.ReadFile(filepath.Join(deployDir(), "grafana", "shardflow.json"))
	if err != nil {
		t.Fatal(err)
	}
	if !json.Valid(b) {
		t.Error("deploy/grafana/shardflow.json is not JSON")
	}
}

// TestDeployKubernetes: every file under deploy/k8s parses, every
// kustomization's resources and generator files exist, and the manifests
// refer only to images, ports, ConfigMaps, Secrets and Services that exist.
func TestDeployKubernetes(t *testing.T) {
	root := filepath.Join(deployDir(), "k8s")
	mains := mainPackages(t)
	objects := map[string][]map[string]any{} // kustomization dir → objects of its resource files
	generated := map[string][]string{}       // kustomization dir → generated Secret/ConfigMap names
	var kustomizations []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".yaml") {
			return err
		}
		for _, doc := range readYAMLDocs(t, p) {
			if doc == nil {
				t.Errorf("%s: empty document", p)
			}
		}
		if filepath.Base(p) == "kustomization.yaml" {
			kustomizations = append(kustomizations, filepath.Dir(p))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(kustomizations) != 3 {
		t.Fatalf("kustomizations %v, want base and the local and production overlays", kustomizations)
	}
	for _, dir := range kustomizations {
		var k map[string]any
		readYAML(t, filepath.Join(dir, "kustomization.yaml"), &k)
		rel, _ := filepath.Rel(root, dir)
		for _, r := range asStrings(k["resources"]) {
			p := filepath.Join(dir, r)
			fi, err := os.Stat(p)
			switch {
			case err != nil:
				t.Errorf("%s: resource %s: %v", rel, r, err)
			case fi.IsDir():
				if _, err := os.Stat(filepath.Join(p, "kustomization.yaml")); err != nil {
					t.Errorf("%s: resource %s is a directory without a kustomization", rel, r)
				}
			default:
				for _, doc := range readYAMLDocs(t, p) {
					objects[rel] = append(objects[rel], doc)
				}
			}
		}
		for _, gen := range []string{"configMapGenerator", "secretGenerator"} {
			for _, x := range asList(k[gen]) {
				g := x.(map[string]any)
				generated[rel] = append(generated[rel], g["name"].(string))
				for _, f := range asStrings(g["files"]) {
					f = f[strings.Index(f, "=")+1:]
					if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
						t.Errorf("%s: %s %s: file %s: %v", rel, gen, g["name"], f, err)
					}
				}
			}
		}
		for _, x := range asList(k["images"]) {
			name := dig(x, "name").(string)
			if !strings.HasPrefix(name, "shardflow/") || !mains[strings.TrimPrefix(name, "shardflow/")] {
				t.Errorf("%s: images: %s is not a shardflow service", rel, name)
			}
		}
	}

	base := objects["base"]
	var values map[string]any
	readYAML(t, filepath.Join(root, "nats-values.yaml"), &values)
	natsService, _ := values["fullnameOverride"].(string)
	nats, err := harness.LoadNATSConfigSet(filepath.Join(deployDir(), "nats"))
	if err != nil {
		t.Fatal(err)
	}

	byKind := func(objs []map[string]any, kind string) map[string]map[string]any {
		out := map[string]map[string]any{}
		for _, o := range objs {
			if o["kind"] == kind {
				out[dig(o, "metadata", "name").(string)] = o
			}
		}
		return out
	}
	configMaps := byKind(base, "ConfigMap")
	services := byKind(base, "Service")
	deployments := byKind(base, "Deployment")
	jobs := byKind(base, "Job")
	localObjects := append(slices.Clone(base), objects["overlays/local"]...)
	localSecrets := generated["overlays/local"]
	prodText, _ := os.ReadFile(filepath.Join(root, "overlays", "production", "kustomization.yaml"))

	cfg := configMaps["shardflow-config"]
	if cfg == nil {
		t.Fatal("base has no shardflow-config ConfigMap")
	}
	natsURL, _ := url.Parse(fmt.Sprint(dig(cfg, "data", "SHARDFLOW_NATS_URL")))
	if natsURL == nil || natsURL.Hostname() != natsService || natsURL.Port() != "4222" {
		t.Errorf("SHARDFLOW_NATS_URL %v is not the NATS chart's service %s:4222 (nats-values.yaml fullnameOverride)", natsURL, natsService)
	}
	if s := fmt.Sprint(dig(cfg, "data", "SHARDFLOW_SHARDS")); s != strconv.Itoa(nats.Manifest.Shards) {
		t.Errorf("SHARDFLOW_SHARDS %s, but the NATS config is generated for %d shards", s, nats.Manifest.Shards)
	}
	otel, _ := url.Parse(fmt.Sprint(dig(cfg, "data", "OTEL_EXPORTER_OTLP_ENDPOINT")))
	if svc := services[otel.Hostname()]; svc == nil || !servicePort(svc, otel.Port()) {
		t.Errorf("OTEL endpoint %s is no Service port", otel)
	}

	workloads := map[string]map[string]any{}
	for n, d := range deployments {
		workloads[n] = d
	}
	for n, j := range jobs {
		workloads[n] = j
	}
	for _, want := range []string{"ingest", "processor", "sender", "accounts", "deadletter", "jaeger", "shardflow-provision"} {
		if workloads[want] == nil {
			t.Errorf("base has no %s workload", want)
		}
	}
	for name, w := range workloads {
		spec := dig(w, "spec", "template", "spec").(map[string]any)
		var volSecrets []string
		for _, v := range asList(spec["volumes"]) {
			if s := dig(v, "secret", "secretName"); s != nil {
				volSecrets = append(volSecrets, s.(string))
			}
		}
		containers := append(asList(spec["initContainers"]), asList(spec["containers"])...)
		for _, x := range containers {
			c := x.(map[string]any)
			img := c["image"].(string)
			switch {
			case strings.HasPrefix(img, "shardflow/"):
				if !mains[strings.TrimPrefix(img, "shardflow/")] {
					t.Errorf("%s: image %s: no such service under services/", name, img)
				}
			case img == "jaegertracing/jaeger:2":
			default:
				t.Errorf("%s: unexpected image %s", name, img)
			}
			var ports []string
			for _, p := range asList(c["ports"]) {
				ports = append(ports, fmt.Sprint(dig(p, "name")), fmt.Sprint(dig(p, "containerPort")))
			}
			for _, probe := range []string{"startupProbe", "livenessProbe", "readinessProbe"} {
				if p := dig(c, probe, "httpGet", "port"); p != nil && !slices.Contains(ports, fmt.Sprint(p)) {
					t.Errorf("%s/%s: %s probes port %v, not one of %v", name, c["name"], probe, p, ports)
				}
			}
			if w["kind"] == "Deployment" {
				if dig(c, "readinessProbe") == nil || dig(c, "livenessProbe") == nil || dig(c, "resources", "requests") == nil || dig(c, "resources", "limits") == nil {
					t.Errorf("%s/%s: needs readiness and liveness probes, requests and limits", name, c["name"])
				}
			}
			for _, e := range asList(c["envFrom"]) {
				if cm := dig(e, "configMapRef", "name"); cm != nil && configMaps[cm.(string)] == nil {
					t.Errorf("%s: envFrom ConfigMap %v does not exist", name, cm)
				}
			}
			env := map[string]string{}
			for _, e := range asList(c["env"]) {
				n := dig(e, "name").(string)
				env[n] = fmt.Sprint(dig(e, "value"))
				if s := dig(e, "valueFrom", "secretKeyRef", "name"); s != nil {
					volSecrets = append(volSecrets, s.(string))
				}
			}
			if _, ok := env["SHARDFLOW_NATS_NKEY_FILE"]; ok {
				user := name
				if name == "shardflow-provision" {
					user = "provisioner"
				}
				if env["SHARDFLOW_NATS_INBOX_PREFIX"] != "_INBOX_"+user || !slices.Contains(volSecrets, "shardflow-nats-"+user) {
					t.Errorf("%s/%s: NATS user %s: inbox %s, secrets %v", name, c["name"], user, env["SHARDFLOW_NATS_INBOX_PREFIX"], volSecrets)
				}
				if _, ok := nats.Manifest.Users[user]; !ok {
					t.Errorf("%s: %s is not a user of the NATS config", name, user)
				}
			}
		}
		for _, s := range volSecrets {
			if !slices.Contains(localSecrets, s) {
				t.Errorf("%s uses Secret %s, which overlays/local does not generate", name, s)
			}
			doc := s
			if svc, ok := strings.CutPrefix(s, "shardflow-nats-"); ok {
				doc = "shardflow-nats-<service>" // "… for ingest, processor, …"
				if !bytes.Contains(prodText, []byte(svc)) {
					t.Errorf("overlays/production does not document the Secret %s", s)
				}
			}
			if !bytes.Contains(prodText, []byte(doc)) {
				t.Errorf("overlays/production does not document the Secret %s", s)
			}
		}
	}
	// Services select pods that exist and target their ports.
	for _, objs := range [][]map[string]any{base, localObjects} {
		svcs, deps := byKind(objs, "Service"), byKind(objs, "Deployment")
		for name, svc := range svcs {
			sel, _ := dig(svc, "spec", "selector").(map[string]any)
			var matched map[string]any
			for _, d := range deps {
				labels, _ := dig(d, "spec", "template", "metadata", "labels").(map[string]any)
				ok := len(sel) > 0
				for k, v := range sel {
					if labels[k] != v {
						ok = false
					}
				}
				if ok {
					matched = d
				}
			}
			if matched == nil {
				t.Errorf("Service %s selects no Deployment", name)
				continue
			}
			var ports []string
			for _, c := range asList(dig(matched, "spec", "template", "spec", "containers")) {
				for _, p := range asList(dig(c, "ports")) {
					ports = append(ports, fmt.Sprint(dig(p, "name")), fmt.Sprint(dig(p, "containerPort")))
				}
			}
			for _, p := range asList(dig(svc, "spec", "ports")) {
				if tp := fmt.Sprint(dig(p, "targetPort")); !slices.Contains(ports, tp) {
					t.Errorf("Service %s targets port %s, not one of %v", name, tp, ports)
				}
			}
		}
	}
	if services["ingest"] == nil || services["accounts-admin"] == nil {
		t.Error("base needs the ingest and accounts-admin Services")
	}
}

func servicePort(svc map[string]any, port string) bool {
	for _, p := range asList(dig(svc, "spec", "ports")) {
		if fmt.Sprint(dig(p, "port")) == port {
			return true
		}
	}
	return false
}

// TestDeployDockerfile: the Dockerfile builds any service by ARG SERVICE
// (whose default exists), statically, into distroless as nonroot, and
// copies only what exists.
func TestDeployDockerfile(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(deployDir(), "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	mains := mainPackages(t)
	args := map[string]string{}
	for _, m := range regexp.MustCompile(`(?m)^ARG (\w+)=(\S+)$`).FindAllStringSubmatch(text, -1) {
		args[m[1]] = m[2]
	}
	if !mains[args["SERVICE"]] {
		t.Errorf("ARG SERVICE default %q is no main package under services/", args["SERVICE"])
	}
	if args["GO_VERSION"] != "1.26" || !strings.Contains(text, "FROM golang:${GO_VERSION} AS build") {
		t.Errorf("the builder must be golang:1.26 (ARG GO_VERSION=%s)", args["GO_VERSION"])
	}
	for _, want := range []string{
		"CGO_ENABLED=0", "-trimpath", `-ldflags="-s -w"`, `"./services/${SERVICE}"`,
		"FROM gcr.io/distroless/static-debian12:nonroot", "USER nonroot:nonroot",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("Dockerfile lacks %s", want)
		}
	}
	for _, m := range regexp.MustCompile(`(?m)^COPY (?:--\S+ )*(.+) (\S+)$`).FindAllStringSubmatch(text, -1) {
		if strings.Contains(m[0], "--from=") {
			continue
		}
		for _, src := range strings.Fields(m[1]) {
			if _, err := os.Stat(filepath.Join(harness.RepoRoot(), src)); err != nil {
				t.Errorf("COPY %s: %v", src, err)
			}
		}
	}
	// Every binary the deployment runs can be built from it.
	for _, svc := range []string{"ingest", "processor", "sender", "accounts", "deadletter", "sfctl"} {
		if !mains[svc] {
			t.Errorf("services/%s has no main package", svc)
		}
	}
}

// TestDeployRunbookCoversAlerts: every alert's runbook_url points at a
// section of docs/runbook.md.
func TestDeployRunbookCoversAlerts(t *testing.T) {
	runbook, err := os.ReadFile(filepath.Join(harness.RepoRoot(), "docs", "runbook.md"))
	if err != nil {
		t.Fatal(err)
	}
	anchors := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^#{1,6} (.+)$`).FindAllStringSubmatch(string(runbook), -1) {
		anchors[githubAnchor(m[1])] = true
	}
	var rules struct {
		Groups []struct {
			Rules []struct {
				Alert       string            `yaml:"alert"`
				Annotations map[string]string `yaml:"annotations"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	readYAML(t, filepath.Join(deployDir(), "prometheus", "alerts.yaml"), &rules)
	n := 0
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			u := r.Annotations["runbook_url"]
			_, frag, ok := strings.Cut(u, "#")
			if !ok || !strings.HasSuffix(strings.SplitN(u, "#", 2)[0], "docs/runbook.md") || !anchors[frag] {
				t.Errorf("alert %s: runbook_url %q is not a section of docs/runbook.md", r.Alert, u)
			}
			n++
		}
	}
	if n == 0 {
		t.Fatal("no alerts found")
	}
}

// githubAnchor is the anchor GitHub gives a Markdown heading.
func githubAnchor(h string) string {
	h = strings.ToLower(strings.TrimSpace(h))
	var b strings.Builder
	for _, r := range h {
		switch {
		case r == ' ' || r == '-':
			b.WriteRune('-')
		case r == '_' || (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') || r > 127:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// mainPackages are the directories under services/ holding a main package.
func mainPackages(t *testing.T) map[string]bool {
	t.Helper()
	root := filepath.Join(harness.RepoRoot(), "services")
	entries, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, e := range entries {
		if !e.IsDir() || e.Name() == "internal" {
			continue
		}
		files, _ := filepath.Glob(filepath.Join(root, e.Name(), "*.go"))
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			pf, err := parser.ParseFile(token.NewFileSet(), f, nil, parser.PackageClauseOnly)
			if err == nil && pf.Name.Name == "main" {
				out[e.Name()] = true
				break
			}
		}
	}
	if len(out) == 0 {
		t.Fatal("no main packages under services/")
	}
	return out
}

func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func readYAMLDocs(t *testing.T, path string) []map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	var out []map[string]any
	for {
		var doc map[string]any
		err := dec.Decode(&doc)
		if err != nil {
			if errors.Is(err, io.EOF) {
				return out
			}
			t.Fatalf("%s: %v", path, err)
		}
		out = append(out, doc)
	}
}

// dig walks nested maps.
func dig(v any, path ...string) any {
	for _, p := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[p]
	}
	return v
}

func asList(v any) []any {
	l, _ := v.([]any)
	return l
}

func asStrings(v any) []string {
	var out []string
	for _, x := range asList(v) {
		out = append(out, fmt.Sprint(x))
	}
	return out
}

func copyTree(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.WalkDir(from, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		dst := filepath.Join(to, rel)
		if d.IsDir() {
			return os.MkdirAll(dst, 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(dst, b, 0o600)
	})
	if err != nil {
		t.Fatal(err)
	}
}
