// tlscheck: Go's crypto/x509 and crypto/tls as an independent consumer of
// rekey's certificates (kube-apiserver, etcd and the kubelet verify with
// them). Standard library only, so it builds offline.
//
//	tlscheck verify    -roots CA.pem -cert LEAF.pem [-usage server|client] [-dns NAME] [-ip ADDR]
//	tlscheck handshake -roots CA.pem -server-cert C -server-key K [-client-cert C -client-key K] [-dns NAME]
//
// Exit 0 when Go accepts, 1 with the reason on stderr when it refuses,
// 2 for bad arguments or unreadable files.
package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"flag"
	"fmt"
	"net"
	"os"
	"time"
)

func fail(code int, format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "tlscheck: "+format+"\n", args...)
	os.Exit(code)
}

func readPool(path string) *x509.CertPool {
	pemBytes, err := os.ReadFile(path)
	if err != nil {
		fail(2, "%v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemBytes) {
		fail(1, "%s: no certificate Go can parse", path)
	}
	return pool
}

// readChain returns the first certificate (the leaf) and the rest as intermediates.
func readChain(path string) (*x509.Certificate, *x509.CertPool) {
	rest, err := os.ReadFile(path)
	if err != nil {
		fail(2, "%v", err)
	}
	var leaf *x509.Certificate
	inter := x509.NewCertPool()
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			fail(1, "%s: Go cannot parse a certificate: %v", path, err)
		}
		if leaf == nil {
			leaf = c
		} else {
			inter.AddCert(c)
		}
	}
	if leaf == nil {
		fail(1, "%s: no certificate", path)
	}
	return leaf, inter
}

func verify(args []string) {
	fs := flag.NewFlagSet("verify", flag.ExitOnError)
	roots := fs.String("roots", "", "trust bundle (PEM)")
	cert := fs.String("cert", "", "leaf, optionally followed by its chain (PEM)")
	usage := fs.String("usage", "any", "server | client | any")
	dns := fs.String("dns", "", "name the leaf must be valid for")
	ip := fs.String("ip", "", "address the leaf must be valid for")
	fs.Parse(args)
	if *roots == "" || *cert == "" {
		fail(2, "verify needs -roots and -cert")
	}
	leaf, inter := readChain(*cert)
	opts := x509.VerifyOptions{Roots: readPool(*roots), Intermediates: inter, CurrentTime: time.Now()}
	switch *usage {
	case "server":
		opts.KeyUsages = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	case "client":
		opts.KeyUsages = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	case "any":
		opts.KeyUsages = []x509.ExtKeyUsage{x509.ExtKeyUsageAny}
	default:
		fail(2, "unknown -usage %q", *usage)
	}
	if _, err := leaf.Verify(opts); err != nil {
		fail(1, "verify: %v", err)
	}
	if *dns != "" {
		if err := leaf.VerifyHostname(*dns); err != nil {
			fail(1, "hostname: %v", err)
		}
	}
	if *ip != "" {
		if err := leaf.VerifyHostname(*ip); err != nil {
			fail(1, "ip: %v", err)
		}
	}
	fmt.Println("ok")
}

func handshake(args []string) {
	fs := flag.NewFlagSet("handshake", flag.ExitOnError)
	roots := fs.String("roots", "", "trust bundle both sides verify with (PEM)")
	sc := fs.String("server-cert", "", "server chain (PEM)")
	sk := fs.String("server-key", "", "server key (PEM)")
	cc := fs.String("client-cert", "", "client chain (PEM), for mutual TLS")
	ck := fs.String("client-key", "", "client key (PEM)")
	dns := fs.String("dns", "", "server name the client expects")
	fs.Parse(args)
	if *roots == "" || *sc == "" || *sk == "" {
		fail(2, "handshake needs -roots, -server-cert and -server-key")
	}
	pool := readPool(*roots)
	serverPair, err := tls.LoadX509KeyPair(*sc, *sk)
	if err != nil {
		fail(1, "server key pair: %v", err)
	}
	serverConf := &tls.Config{Certificates: []tls.Certificate{serverPair}, MinVersion: tls.VersionTLS12}
	clientConf := &tls.Config{RootCAs: pool, ServerName: *dns, MinVersion: tls.VersionTLS12}
	if *dns == "" {
		leaf, _ := readChain(*sc)
		if len(leaf.DNSNames) > 0 {
			clientConf.ServerName = leaf.DNSNames[0]
		} else if len(leaf.IPAddresses) > 0 {
			clientConf.ServerName = leaf.IPAddresses[0].String()
		}
	}
	if *cc != "" {
		clientPair, err := tls.LoadX509KeyPair(*cc, *ck)
		if err != nil {
			fail(1, "client key pair: %v", err)
		}
		clientConf.Certificates = []tls.Certificate{clientPair}
		serverConf.ClientCAs = pool
		serverConf.ClientAuth = tls.RequireAndVerifyClientCert
	}
	a, b := net.Pipe()
	errs := make(chan error, 1)
	go func() {
		s := tls.Server(a, serverConf)
		err := s.Handshake()
		if err == nil {
			_, err = s.Write([]byte{1})
		}
		s.Close()
		errs <- err
	}()
	c := tls.Client(b, clientConf)
	cerr := c.Handshake()
	if cerr == nil {
		buf := make([]byte, 1)
		_, cerr = c.Read(buf)
	}
	c.Close()
	serr := <-errs
	if err := firstErr(cerr, serr); err != nil {
		fail(1, "handshake: %v", err)
	}
	fmt.Println("ok")
}

func main() {
	if len(os.Args) < 2 {
		fail(2, "usage: tlscheck verify|handshake ...")
	}
	switch os.Args[1] {
	case "verify":
		verify(os.Args[2:])
	case "handshake":
		handshake(os.Args[2:])
	default:
		fail(2, "unknown command %q", os.Args[1])
	}
}

func firstErr(client, server error) error {
	if client != nil && server != nil {
		return fmt.Errorf("client: %v; server: %v", client, server)
	}
	if client != nil {
		return fmt.Errorf("client: %v", client)
	}
	if server != nil {
		return fmt.Errorf("server: %v", server)
	}
	return nil
}
