package natsconn_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/shardflow/shardflow/services/internal/natsconn"
)

// pair writes a certificate (signed by ca, or self-signed when ca is nil)
// and its key to dir, returning the paths and the parsed pair.
func pair(t *testing.T, dir, name string, ca *tls.Certificate, isCA bool) (certPath, keyPath string, out tls.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IsCA:         isCA, BasicConstraintsValid: true,
	}
	parent, signer := tmpl, any(key)
	if ca != nil {
		parent, signer = ca.Leaf, ca.PrivateKey
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	certPath, keyPath = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
	_ = os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	_ = os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	out, err = tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		t.Fatal(err)
	}
	out.Leaf, _ = x509.ParseCertificate(der)
	return certPath, keyPath, out
}

// TestConnectWithClientCertificate: against a server that verifies client
// certificates (tls { verify: true }, as the generated cluster configs
// do), Connect succeeds with the CA and a client certificate, and fails
// clearly without the certificate.
func TestConnectWithClientCertificate(t *testing.T) {
	dir := t.TempDir()
	caPath, _, ca := pair(t, dir, "ca", nil, true)
	srvCert, srvKey, _ := pair(t, dir, "server", &ca, false)
	cliCert, cliKey, _ := pair(t, dir, "client", &ca, false)
	tlsCfg, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: srvCert, KeyFile: srvKey, CaFile: caPath, Verify: true, Timeout: 2})
	if err != nil {
		t.Fatal(err)
	}
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, TLS: true, TLSVerify: true, TLSConfig: tlsCfg, TLSTimeout: 2, NoSigs: true, NoLog: true})
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(5 * time.Second) {
		t.Fatal("server not ready")
	}
	defer s.Shutdown()
	url := "tls://" + s.Addr().String()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	nc, err := natsconn.Connect(ctx, natsconn.Config{URL: url, TLSCAFile: caPath, TLSCertFile: cliCert, TLSKeyFile: cliKey})
	if err != nil {
		t.Fatalf("connect with a client certificate: %v", err)
	}
	if err := nc.Publish("x", []byte("y")); err != nil || !nc.TLSRequired() {
		t.Fatalf("publish over TLS: %v (tls required %v)", err, nc.TLSRequired())
	}
	nc.Close()

	ctx2, cancel2 := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel2()
	if _, err := natsconn.Connect(ctx2, natsconn.Config{URL: url, TLSCAFile: caPath}); err == nil {
		t.Fatal("connected without a client certificate to a server that verifies clients")
	}
	if _, err := natsconn.Connect(ctx2, natsconn.Config{URL: url, TLSCAFile: caPath, TLSCertFile: cliCert}); err == nil || !strings.Contains(err.Error(), "both the certificate and the key") {
		t.Fatalf("a certificate without its key: %v", err)
	}
}
