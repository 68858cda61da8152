package upstream

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"
)

// ProjectIDHeader is the header naming the project a signed request acts
// in, as the official SDK sends it.
const ProjectIDHeader = "X-Project-Id"

// SigningDateHeader is the header carrying the time a request was signed
// at, in [SigningDateFormat]. It is always among the signed headers.
const SigningDateHeader = "X-Sdk-Date"

// SigningDateFormat is the layout of [SigningDateHeader]: UTC, to the
// second.
const SigningDateFormat = "20060102T150405Z"

// emptyBodySHA256 is the hex SHA-256 of an empty body: the payload hash of
// every request signed here, since they are all body-less GETs.
const emptyBodySHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

// AKSKSigner signs requests with an access key pair (SDK-HMAC-SHA256, the
// headers X-Sdk-Date and Authorization) exactly as the official Huawei
// Cloud SDK's signer does (see [SignRequest]), and names the project in
// X-Project-Id as the SDK does. The secret key never leaves the process:
// only the signature is sent.
type AKSKSigner struct {
	ak, sk, projectID string
}

// NewAKSKSigner returns a signer for the access key ak with secret key sk,
// acting in projectID.
func NewAKSKSigner(ak, sk, projectID string) (*AKSKSigner, error) {
	if ak == "" || sk == "" || projectID == "" {
		return nil, errors.New("AK/SK signing needs an access key, a secret key and a project id")
	}
	return &AKSKSigner{ak: ak, sk: sk, projectID: projectID}, nil
}

// Authorize implements [Credentials]. It signs the method, path, query and
// the X-Project-Id and X-Sdk-Date headers, as the SDK does for its own calls.
func (s *AKSKSigner) Authorize(_ context.Context, req *http.Request) (string, error) {
	now := time.Now()
	req.Header.Set(ProjectIDHeader, s.projectID)
	req.Header.Set(SigningDateHeader, now.UTC().Format(SigningDateFormat))
	req.Header.Set("Authorization", SignRequest(req, s.ak, s.sk, []string{ProjectIDHeader}, now))
	return "", nil
}

// SignRequest returns the Authorization header value that signs the
// body-less request req at time t with the access key ak and secret key sk,
// byte for byte as the official SDK's signer (core/auth/signer,
// SDK-HMAC-SHA256) does. The signature covers req's method, decoded path and
// query, X-Sdk-Date as t formatted in [SigningDateFormat] (req's own value
// of it is not read), and the named headers with req's first value of each,
// trimmed (empty when absent). The names are ordinary header names: the SDK
// treats Content-Type, X-Sdk-Content-Sha256 and names with "_" specially,
// and they are never signed here. A verifier calls it with the request it
// received, the headers its Authorization names and its X-Sdk-Date.
//
// The separate module upstream/sdkcompat checks it against the SDK.
func SignRequest(req *http.Request, ak, sk string, headers []string, t time.Time) string {
	date := t.UTC().Format(SigningDateFormat)

	// Signed headers: lower-case names, each once, sorted.
	values := map[string]string{strings.ToLower(SigningDateHeader): date}
	for _, h := range headers {
		if k := strings.ToLower(h); k != strings.ToLower(SigningDateHeader) {
			values[k] = strings.TrimSpace(req.Header.Get(h))
		}
	}
	names := slices.Sorted(maps.Keys(values))
	var canonicalHeaders strings.Builder
	for _, k := range names {
		canonicalHeaders.WriteString(k + ":" + values[k] + "\n")
	}

	// URI: each segment of the decoded path escaped, with a trailing slash.
	segments := strings.Split(req.URL.Path, "/")
	for i, s := range segments {
		segments[i] = escape(s)
	}
	uri := strings.Join(segments, "/")
	if !strings.HasSuffix(uri, "/") {
		uri += "/"
	}

	// Query: keys sorted, then each key's values, both before escaping.
	query := req.URL.Query()
	var params []string
	for _, k := range slices.Sorted(maps.Keys(query)) {
		for _, v := range slices.Sorted(slices.Values(query[k])) {
			params = append(params, escape(k)+"="+escape(v))
		}
	}

	canonicalRequest := strings.Join([]string{req.Method, uri, strings.Join(params, "&"),
		canonicalHeaders.String(), strings.Join(names, ";"), emptyBodySHA256}, "\n")
	crHash := sha256.Sum256([]byte(canonicalRequest))
	mac := hmac.New(sha256.New, []byte(sk))
	mac.Write([]byte("SDK-HMAC-SHA256\n" + date + "\n" + hex.EncodeToString(crHash[:])))
	return "SDK-HMAC-SHA256 Access=" + ak + ", SignedHeaders=" + strings.Join(names, ";") +
		", Signature=" + hex.EncodeToString(mac.Sum(nil))
}

// escape percent-encodes, in upper-case hex, every byte but the unreserved
// A-Z a-z 0-9 - _ . ~, as the SDK's signer does (url.PathEscape and
// url.QueryEscape keep more, or write a space as "+").
func escape(s string) string {
	var b strings.Builder
	for i := range len(s) {
		c := s[i]
		if 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || strings.IndexByte("-_.~", c) >= 0 {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}
