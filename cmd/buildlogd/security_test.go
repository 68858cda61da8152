package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/buildlog/buildlog/server/servertest"
	"github.com/buildlog/buildlog/upstream/upstreamtest"
)

func TestParseSecurityConfig(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		args    []string
		wantErr string // empty: accepted
	}{
		{"TLS", []string{"--tls-cert", "c", "--tls-key", "k"}, ""},
		{"mTLS and AK/SK", []string{"--tls-cert", "c", "--tls-key", "k", "--tls-client-ca", "ca", "--upstream-ak", "AK", "--upstream-sk-file", "sk", "--project-id", "p"}, ""},
		{"IAM with caller tokens, endpoint from the region", []string{"--region", "cn-east-3", "--iam-user", "u", "--iam-domain", "d", "--iam-password-file", "pw", "--project-id", "p", "--caller-tokens-file", "t"}, ""},
		{"certificate without key", []string{"--tls-cert", "c"}, "--tls-key"},
		{"client CA without certificate", []string{"--tls-client-ca", "ca"}, "--tls-cert"},
		{"CA and insecure", []string{"--upstream-ca", "ca", "--upstream-insecure-skip-verify"}, "not both"},
		{"AK without SK", []string{"--upstream-ak", "AK", "--project-id", "p", "--caller-tokens-file", "t"}, "--upstream-sk-file"},
		{"AK/SK and IAM", []string{"--upstream-ak", "AK", "--upstream-sk-file", "sk", "--iam-user", "u"}, "not both"},
		{"IAM without password", []string{"--iam-user", "u", "--iam-domain", "d", "--project-id", "p", "--caller-tokens-file", "t"}, "--iam-password-file"},
		{"IAM with --upstream and no endpoint", []string{"--upstream", "https://x", "--iam-user", "u", "--iam-domain", "d", "--iam-password-file", "pw", "--project-id", "p", "--caller-tokens-file", "t"}, "--iam-endpoint"},
		{"credentials without project", []string{"--upstream-ak", "AK", "--upstream-sk-file", "sk", "--caller-tokens-file", "t"}, "--project-id"},
		{"credentials for anonymous callers", []string{"--upstream-ak", "AK", "--upstream-sk-file", "sk", "--project-id", "p"}, "anonymous"},
		{"project without credentials", []string{"--project-id", "p"}, "--project-id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg, err := parseConfig(tt.args, env(nil), io.Discard)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("parseConfig() = %v, want success", err)
				}
				if strings.Contains(tt.name, "region") && cfg.security.iamEndpoint != "https://iam.cn-east-3.myhuaweicloud.com" {
					t.Errorf("IAM endpoint %q, want the region's", cfg.security.iamEndpoint)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("parseConfig() = %v, want an error mentioning %q", err, tt.wantErr)
			}
		})
	}
}

// TestRunWithTLSAndServerCredentials runs buildlogd as an operator would:
// TLS, a caller tokens file, AK/SK from a file. An authenticated caller
// without a token gets the log over HTTPS; no secret reaches the logs.
func TestRunWithTLSAndServerCredentials(t *testing.T) {
	t.Parallel()
	const (
		ak, sk, project = "AKRUNTEST", "SK-run-test-secret-0001", "0123456789abcdef0123456789abcdef"
		bearer          = "run-test-bearer-0001"
		recordID        = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
	)
	up := upstreamtest.NewServer()
	defer up.Close()
	up.AddAKSK(ak, sk)
	up.AddLog(recordID, "stage1", upstreamtest.Log{Content: []byte("run log\n")})

	dir := t.TempDir()
	ca := servertest.NewCA(t, "buildlogd CA")
	certPEM, keyPEM, _ := ca.Issue(t, "buildlogd", true)
	args := []string{
		"--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--admin-addr", "off", "--upstream", up.URL,
		"--tls-cert", servertest.WriteFile(t, dir, "tls.crt", certPEM),
		"--tls-key", servertest.WriteFile(t, dir, "tls.key", keyPEM),
		"--caller-tokens-file", servertest.WriteFile(t, dir, "callers", []byte(bearer+"\n")),
		"--upstream-ak", ak, "--upstream-sk-file", servertest.WriteFile(t, dir, "sk", []byte(sk+"\n")),
		"--project-id", project,
		"--upstream-insecure-skip-verify", // not used (http upstream), but must warn
	}
	ctx, cancel := context.WithCancel(context.Background())
	logs, w := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, args, env(nil), io.Discard, w)
		w.Close()
	}()

	var all strings.Builder
	var httpAddr string
	sc := bufio.NewScanner(logs)
	for httpAddr == "" && sc.Scan() {
		all.WriteString(sc.Text() + "\n")
		var line map[string]any
		if json.Unmarshal(sc.Bytes(), &line) == nil && line["msg"] == "serving" {
			httpAddr, _ = line["http"].(string)
		}
	}
	if httpAddr == "" {
		t.Fatalf("buildlogd logged no serving line: %s", all.String())
	}
	rest := make(chan struct{})
	go func() {
		for sc.Scan() {
			all.WriteString(sc.Text() + "\n")
		}
		close(rest)
	}()

	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool(), MinVersion: tls.VersionTLS12}, ForceAttemptHTTP2: true}
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequest(http.MethodGet, "https://"+httpAddr+"/v4/"+recordID+"/task-log?task_name=stage1", nil)
	req.Header.Set("Authorization", "Bearer "+bearer)
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || string(body) != "run log\n" {
		t.Errorf("HTTPS download with a caller token: %d %q %v; want 200 and the log", resp.StatusCode, body, err)
	}

	cancel()
	if err := <-done; err != nil {
		t.Errorf("run() = %v", err)
	}
	<-rest
	if !strings.Contains(all.String(), "NOT verified") {
		t.Errorf("logs %s: want a warning about --upstream-insecure-skip-verify", all.String())
	}
	for _, secret := range []string{sk, bearer} {
		if strings.Contains(all.String(), secret) {
			t.Errorf("buildlogd's logs contain a secret (%d bytes)", len(secret))
		}
	}
}

func TestRunRefusesBadSecretFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	tests := []struct {
		name, skFile, wantErr string
	}{
		{"missing secret key file", dir + "/none", "--upstream-sk-file"},
		{"empty secret key file", servertest.WriteFile(t, dir, "empty", []byte("\n")), "exactly one line"},
		{"two lines", servertest.WriteFile(t, dir, "two", []byte("SK-line-one\nSK-line-two\n")), "exactly one line"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := run(context.Background(), []string{"--upstream", "http://127.0.0.1:1", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--admin-addr", "off",
				"--upstream-ak", "AK", "--upstream-sk-file", tt.skFile, "--project-id", "p", "--caller-tokens-file", tt.skFile}, env(nil), io.Discard, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("run() = %v, want an error mentioning %q", err, tt.wantErr)
			}
			if strings.Contains(err.Error(), "SK-line") {
				t.Errorf("error %q contains the secret file's content", err)
			}
		})
	}
}
