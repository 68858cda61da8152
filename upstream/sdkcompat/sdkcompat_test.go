// Package sdkcompat_test proves that buildlog's in-tree AK/SK signer
// (upstream.SignRequest, upstream.AKSKSigner) signs exactly as the official
// Huawei Cloud SDK's signer (core/auth/signer, SDK-HMAC-SHA256) does. It is
// a separate module so that the main module does not depend on the SDK.
package sdkcompat_test

import (
	"context"
	"math/rand/v2"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/huaweicloud/huaweicloud-sdk-go-v3/core/auth/signer"
	"github.com/huaweicloud/huaweicloud-sdk-go-v3/core/request"

	"github.com/buildlog/buildlog/upstream"
)

// signingRequest describes req to the SDK's signer: its method, endpoint,
// decoded path, query, and the named headers with req's values (X-Sdk-Date
// too, when req has one). It is buildlog's upstream.SigningRequest as it was
// when the SDK signed buildlog's requests, copied unchanged.
func signingRequest(req *http.Request, headers []string) *request.DefaultHttpRequest {
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

// sdkSign returns the SDK's X-Sdk-Date and Authorization for req signed
// with the named headers.
func sdkSign(t *testing.T, req *http.Request, ak, sk string, headers []string) (date, auth string) {
	t.Helper()
	h, err := signer.Sign(signingRequest(req, slices.Clone(headers)), ak, sk)
	if err != nil {
		t.Fatalf("SDK Sign: %v", err)
	}
	if len(h) != 2 {
		t.Fatalf("SDK Sign returned headers %v, want X-Sdk-Date and Authorization only", h)
	}
	return h[signer.HeaderXDate], h[signer.HeaderAuthorization]
}

// The constants the verifier relies on are the SDK's.
func TestConstants(t *testing.T) {
	if upstream.SigningDateHeader != signer.HeaderXDate || upstream.SigningDateFormat != signer.BasicDateFormat {
		t.Errorf("SigningDateHeader, SigningDateFormat = %q, %q; the SDK's are %q, %q",
			upstream.SigningDateHeader, upstream.SigningDateFormat, signer.HeaderXDate, signer.BasicDateFormat)
	}
}

// gen draws the pieces of generated requests, deterministically.
type gen struct{ r *rand.Rand }

func (g gen) pick(s []string) string { return s[g.r.IntN(len(s))] }

// str returns up to n characters drawn from alphabet.
func (g gen) str(alphabet []string, n int) string {
	var b strings.Builder
	for range g.r.IntN(n + 1) {
		b.WriteString(g.pick(alphabet))
	}
	return b.String()
}

var (
	recordIDChars = strings.Split("0123456789abcdefghijklmnopqrstuvwxyz-", "")
	// Task names and query text: what escape must encode or keep, in
	// one and several bytes, and invalid UTF-8.
	textChars = []string{"a", "Z", "0", "9", "s", "t", "a", "g", "e", " ", "  ", "+", "%", "%2F", "%zz", "/", "~", "-", "_", ".",
		"ü", "中", "日本", "🚀", "&", "=", "?", "#", ";", ",", ":", "@", "!", "*", "'", "(", ")", "\"", "\\", "\t", "\xff", "\x00", "é"}
	// Keys and secrets with characters an Authorization must carry as is.
	keyChars = []string{"A", "K", "s", "k", "0", "7", "-", "_", "+", "/", "=", "%", " ", ",", ";", ":", "ü", "~", "!", "$", "\""}
	// Signed header names: spellings of the ones signed, and others a
	// verifier may be asked to check. Not Content-Type,
	// X-Sdk-Content-Sha256 or names with "_", which the SDK treats
	// specially and nobody signs here (see upstream.SignRequest).
	headerNames = []string{"X-Project-Id", "x-project-id", "X-PROJECT-ID", "X-Sdk-Date", "x-sdk-date", "X-Request-Id", "User-Agent",
		"Accept", "Accept-Encoding", "Range", "X-Auth-Token", "host", "Host", "X-Custom-1", "X-Empty", "x-a", "X-B"}
	headerValueChars = []string{"v", "1", "0123456789abcdef", " ", "\t", "  ", "\u00a0", "\u3000", "ü", "中", "=", ",", ";", ":", "bytes=0-", "*/*", "Go-http-client/1.1"}
	levels           = []string{"", "", "INFO", "DEBUG", "info", "TRACE", "INFO DEBUG"}
	endpoints        = []string{"https://cloudbuild-ext.cn-north-4.myhuaweicloud.com", "http://127.0.0.1:8080", "http://sidecar:15001/prefix/",
		"https://cloudbuild-ext.ap-southeast-3.myhuaweicloud.com/", "http://gw.internal/a~b/c-d_e.f/"}
)

// date returns a time between 1970 and 2100, with nanoseconds the date
// format drops, in a time zone that is not always UTC.
func (g gen) date() time.Time {
	t := time.Unix(g.r.Int64N(4102444800), g.r.Int64N(1e9))
	return t.In(time.FixedZone("", (g.r.IntN(49)-24)*1800))
}

func (g gen) key() string {
	for {
		if k := g.str(keyChars, 40); k != "" {
			return k
		}
	}
}

// headers returns a few signed header names and sets random values on req
// for some of them (the others are signed absent, as empty).
func (g gen) headers(req *http.Request) []string {
	var names []string
	for range g.r.IntN(5) {
		h := g.pick(headerNames)
		names = append(names, h)
		if strings.EqualFold(h, signer.HeaderXDate) {
			continue
		}
		switch g.r.IntN(4) {
		case 0: // absent
		case 1: // several values: the first is signed
			req.Header.Add(h, g.str(headerValueChars, 6))
			req.Header.Add(h, g.str(headerValueChars, 6))
		default:
			req.Header.Set(h, g.str(headerValueChars, 6))
		}
	}
	return names
}

// rawQuery returns a query string with repeated, empty and valueless
// parameters, escapes both valid and not, and "+".
func (g gen) rawQuery() string {
	var params []string
	keys := []string{"task_name", "log_level", "a", "A", "b", "", "k%20k", "k+k", "ü", "%C3%BC", "x~y", "q"}
	for range g.r.IntN(7) {
		k := g.pick(keys)
		switch g.r.IntN(5) {
		case 0:
			params = append(params, k)
		case 1:
			params = append(params, k+"=")
		default:
			params = append(params, k+"="+g.str([]string{"1", "0", "z", "Z", "+", "%20", "%2B", "%25", "%2F", "/", "~", "-", "%C3%BC", "ü", "%zz", "=", "%00", "%FF", "a b"}, 5))
		}
	}
	return strings.Join(params, "&")
}

// rawPath returns a path with empty segments, escapes (%2F among them),
// unicode and a trailing slash or not.
func (g gen) rawPath() string {
	var segs []string
	for range g.r.IntN(6) {
		segs = append(segs, g.str([]string{"v4", "task-log", "a", "0", "-", "_", ".", "..", "~", "%2F", "%20", "%25", "+", "ü", "%C3%BC", "中", "!", "$", "'", "(", ")", "*", ",", ";", "=", ":", "@", "&"}, 4))
	}
	return "/" + strings.Join(segs, "/")
}

// Our requests, as upstream.Client builds and upstream.AKSKSigner signs
// them: the SDK, signing the same request at the same X-Sdk-Date, gives
// the same Authorization. A verifier re-signs exactly so.
func TestAKSKSignerMatchesSDK(t *testing.T) {
	g := gen{rand.New(rand.NewPCG(1, 2))}
	clients := map[string]*upstream.Client{}
	for _, e := range endpoints {
		c, err := upstream.New(e)
		if err != nil {
			t.Fatal(err)
		}
		clients[e] = c
	}
	for i := range 4000 {
		ak, sk, project := g.key(), g.key(), g.str(keyChars, 40)
		if project == "" {
			project = "0123456789abcdef0123456789abcdef"
		}
		s, err := upstream.NewAKSKSigner(ak, sk, project)
		if err != nil {
			t.Fatal(err)
		}
		id := g.str(recordIDChars, 40)
		if id == "" {
			id = "3f2a9c1e-7b4d-4e8a-9c6f-1d2e3f4a5b6c"
		}
		u := clients[g.pick(endpoints)].URL(upstream.Request{RecordID: id, TaskName: g.str(textChars, 12), LogLevel: g.pick(levels)})
		req, err := http.NewRequest(http.MethodGet, u.String(), nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Authorize(context.Background(), req); err != nil {
			t.Fatal(err)
		}
		date, auth := sdkSign(t, req, ak, sk, []string{upstream.ProjectIDHeader})
		if date != req.Header.Get(signer.HeaderXDate) || auth != req.Header.Get(signer.HeaderAuthorization) {
			t.Fatalf("case %d: %s with AK %q, SK %q, project %q:\nours: X-Sdk-Date %q, Authorization %q\nSDK:  X-Sdk-Date %q, Authorization %q",
				i, u, ak, sk, project, req.Header.Get(signer.HeaderXDate), req.Header.Get(signer.HeaderAuthorization), date, auth)
		}
	}
}

// Arbitrary body-less requests, signed with arbitrary headers at arbitrary
// dates: SignRequest at t gives the SDK's Authorization for the request
// carrying t in X-Sdk-Date.
func TestSignRequestMatchesSDK(t *testing.T) {
	g := gen{rand.New(rand.NewPCG(3, 4))}
	for i := range 6000 {
		target := g.pick(endpoints[:3]) + g.rawPath()
		if q := g.rawQuery(); q != "" || g.r.IntN(4) == 0 {
			target = strings.TrimSuffix(target, "/") + g.rawPath() + "?" + q
		}
		req, err := http.NewRequest(g.pick([]string{"GET", "GET", "GET", "HEAD", "DELETE"}), target, nil)
		if err != nil {
			t.Fatal(err)
		}
		headers := g.headers(req)
		ak, sk, tm := g.key(), g.key(), g.date()
		req.Header.Set(signer.HeaderXDate, tm.UTC().Format(signer.BasicDateFormat))
		want := upstream.SignRequest(req, ak, sk, headers, tm)
		date, auth := sdkSign(t, req, ak, sk, headers)
		if date != tm.UTC().Format(signer.BasicDateFormat) || auth != want {
			t.Fatalf("case %d: %s %s headers %q %v at %v, AK %q, SK %q:\nours: %q\nSDK:  %q (X-Sdk-Date %q)",
				i, req.Method, target, headers, req.Header, tm, ak, sk, want, auth, date)
		}
	}
}

// Without X-Sdk-Date the SDK signs at the current time; SignRequest at that
// time gives the same Authorization.
func TestSignRequestMatchesSDKAtNow(t *testing.T) {
	g := gen{rand.New(rand.NewPCG(5, 6))}
	for i := range 500 {
		target := g.pick(endpoints[:3]) + g.rawPath() + "?" + g.rawQuery()
		req, err := http.NewRequest(http.MethodGet, target, nil)
		if err != nil {
			t.Fatal(err)
		}
		headers := g.headers(req)
		headers = slices.DeleteFunc(headers, func(h string) bool { return strings.EqualFold(h, signer.HeaderXDate) })
		ak, sk := g.key(), g.key()
		date, auth := sdkSign(t, req, ak, sk, headers)
		tm, err := time.Parse(signer.BasicDateFormat, date)
		if err != nil {
			t.Fatal(err)
		}
		if want := upstream.SignRequest(req, ak, sk, headers, tm); auth != want {
			t.Fatalf("case %d: %s headers %q, AK %q, SK %q at %s:\nours: %q\nSDK:  %q", i, target, headers, ak, sk, date, want, auth)
		}
	}
}

// Hand-written cases at the edges of the canonical request.
func TestSignRequestEdgeCases(t *testing.T) {
	tm := time.Date(2025, 2, 28, 23, 59, 59, 999999999, time.FixedZone("CST", 8*3600))
	tests := []struct {
		name, method, target string
		header               http.Header
		headers              []string
		ak, sk               string
		date                 string // X-Sdk-Date as received; default tm's
	}{
		{"our request", "GET", "https://cloudbuild-ext.cn-north-4.myhuaweicloud.com/v4/3f2a9c1e-7b4d-4e8a-9c6f-1d2e3f4a5b6c/task-log?task_name=stage%201%2F%C3%BC&log_level=DEBUG",
			http.Header{"X-Project-Id": {"0123456789abcdef0123456789abcdef"}}, []string{"X-Project-Id"}, "AKTEST0123456789", "SK-very-secret-0123456789abcdef", ""},
		{"no path", "GET", "http://h", nil, nil, "a", "b", ""},
		{"root", "GET", "http://h/", nil, nil, "a", "b", ""},
		{"empty segments", "GET", "http://h//a//b//", nil, nil, "a", "b", ""},
		{"escaped slash and percent in the path", "GET", "http://h/a%2Fb/%25/~/+/%20/%C3%BC", nil, nil, "a", "b", ""},
		{"dot segments", "GET", "http://h/a/./../b/..", nil, nil, "a", "b", ""},
		{"bare question mark", "GET", "http://h/x?", nil, nil, "a", "b", ""},
		{"repeated, empty and valueless parameters", "GET", "http://h/x?b=2&a=&b=1&a&b=10&c=%20&c=+&c=%2B", nil, nil, "a", "b", ""},
		{"sorted before escaping", "GET", "http://h/x?k=a.&k=a%2F&k=az&k=a%C3%A9&z=1&%C3%A9=2&.=3&%2F=4&a-=5&a=6", nil, nil, "a", "b", ""},
		{"empty key", "GET", "http://h/x?=v&=&a=1", nil, nil, "a", "b", ""},
		{"invalid escape and semicolon dropped", "GET", "http://h/x?a=%zz&b=1;c=2&d=4", nil, nil, "a", "b", ""},
		{"unicode key and value", "GET", "http://h/x?%E4%B8%AD=%F0%9F%9A%80&ü=é", nil, nil, "a", "b", ""},
		{"header spellings, duplicates and X-Sdk-Date named", "GET", "http://h/x", http.Header{"X-Project-Id": {"p"}},
			[]string{"x-project-id", "X-PROJECT-ID", "X-Project-Id", "x-sdk-date", "X-Sdk-Date"}, "a", "b", ""},
		{"absent and empty headers", "GET", "http://h/x", http.Header{"X-Empty": {""}}, []string{"X-Empty", "X-Absent"}, "a", "b", ""},
		{"values trimmed, inner space kept, first value", "GET", "http://h/x", http.Header{"X-A": {" \t a  b \u00a0", "second"}, "User-Agent": {"\u3000ua\n"}},
			[]string{"X-A", "User-Agent"}, "a", "b", ""},
		{"host named but not a header", "GET", "http://h:8080/x", nil, []string{"host"}, "a", "b", ""},
		{"empty header name", "GET", "http://h/x", nil, []string{""}, "a", "b", ""},
		{"odd keys", "GET", "http://h/x", nil, nil, "AK, SignedHeaders=x", "=+/ü\x00\"", ""},
		{"epoch", "GET", "http://h/x", nil, nil, "a", "b", "19700101T000000Z"},
		{"fractional seconds received", "GET", "http://h/x", nil, nil, "a", "b", "20250228T155959.75Z"},
		{"year 9999", "GET", "http://h/x", nil, nil, "a", "b", "99991231T235959Z"},
		{"before 1970", "GET", "http://h/x", nil, nil, "a", "b", "19000101T120000Z"},
		{"HEAD", "HEAD", "http://h/x?a=1", nil, nil, "a", "b", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequest(tt.method, tt.target, nil)
			if err != nil {
				t.Fatal(err)
			}
			for k, vs := range tt.header {
				req.Header[k] = vs
			}
			date := tt.date
			if date == "" {
				date = tm.UTC().Format(signer.BasicDateFormat)
			}
			req.Header.Set(signer.HeaderXDate, date)
			at, err := time.Parse(upstream.SigningDateFormat, date)
			if err != nil {
				t.Fatal(err)
			}
			want := upstream.SignRequest(req, tt.ak, tt.sk, tt.headers, at)
			gotDate, got := sdkSign(t, req, tt.ak, tt.sk, tt.headers)
			if gotDate != at.UTC().Format(signer.BasicDateFormat) || got != want {
				t.Errorf("ours: %q\nSDK:  %q (X-Sdk-Date %q)", want, got, gotDate)
			}
		})
	}
}

// The equality is not vacuous: a change to any signed part changes the
// signature, for us as for the SDK.
func TestSignatureDependsOnEachPart(t *testing.T) {
	tm := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	base := func() *http.Request {
		req, _ := http.NewRequest("GET", "http://h/v4/r/task-log?task_name=s%201", nil)
		req.Header.Set("X-Project-Id", "p")
		return req
	}
	sign := func(req *http.Request, sk string, at time.Time) string {
		return upstream.SignRequest(req, "ak", sk, []string{"X-Project-Id"}, at)
	}
	want := sign(base(), "sk", tm)
	changes := map[string]func() string{
		"secret key": func() string { return sign(base(), "sk2", tm) },
		"date":       func() string { return sign(base(), "sk", tm.Add(time.Second)) },
		"method":     func() string { r := base(); r.Method = "HEAD"; return sign(r, "sk", tm) },
		"path":       func() string { r := base(); r.URL.Path = "/v4/r2/task-log"; return sign(r, "sk", tm) },
		"query":      func() string { r := base(); r.URL.RawQuery = "task_name=s%202"; return sign(r, "sk", tm) },
		"header":     func() string { r := base(); r.Header.Set("X-Project-Id", "q"); return sign(r, "sk", tm) },
	}
	for name, f := range changes {
		if got := f(); got == want {
			t.Errorf("changing the %s keeps the signature %q", name, got)
		}
	}
}
