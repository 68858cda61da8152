package upstream

import (
	"context"
	"errors"
	"net/http"
	"reflect"
	"slices"

	"github.com/huaweicloud/huaweicloud-sdk-go-v3/core/auth/signer"
	"github.com/huaweicloud/huaweicloud-sdk-go-v3/core/request"
)

// ProjectIDHeader is the header naming the project a signed request acts
// in, as the official SDK sends it.
const ProjectIDHeader = "X-Project-Id"

// AKSKSigner signs requests with an access key pair (SDK-HMAC-SHA256, the
// headers X-Sdk-Date and Authorization), using the official Huawei Cloud
// SDK's signer, and names the project in X-Project-Id as the SDK does. The
// secret key never leaves the process: only the signature is sent.
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
	req.Header.Set(ProjectIDHeader, s.projectID)
	headers, err := signer.Sign(SigningRequest(req, []string{ProjectIDHeader}), s.ak, s.sk)
	if err != nil {
		// The SDK's errors name only which of AK or SK is missing.
		return "", &CredentialsError{Op: "sign the request", Err: err}
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	return "", nil
}

// SigningRequest describes req to the SDK's signer: its method, endpoint,
// decoded path, query, and the named headers with req's values (X-Sdk-Date
// too, when req has one). A verifier rebuilds it from the request it
// received, with the headers the Authorization names, and signs it again.
func SigningRequest(req *http.Request, headers []string) *request.DefaultHttpRequest {
	b := request.NewHttpRequestBuilder().
		WithEndpoint(req.URL.Scheme + "://" + req.URL.Host).
		WithPath(req.URL.Path).
		WithMethod(req.Method)
	for k, vs := range req.URL.Query() {
		// The SDK reads only reflect.Values: a string, or a slice for a
		// repeated parameter.
		if len(vs) == 1 {
			b.AddQueryParam(k, reflect.ValueOf(vs[0]))
		} else {
			b.AddQueryParam(k, reflect.ValueOf(vs))
		}
	}
	if !slices.Contains(headers, signer.HeaderXDate) && req.Header.Get(signer.HeaderXDate) != "" {
		headers = append(headers, signer.HeaderXDate)
	}
	for _, h := range headers {
		// The SDK looks X-Sdk-Date up by its canonical spelling.
		b.AddHeaderParam(http.CanonicalHeaderKey(h), req.Header.Get(h))
	}
	return b.Build()
}
