package web

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
)

// Access says who may read the dashboard. Everything it serves but its
// script and style shows names, arguments, environment or output, so every
// other path needs the token; and every request must name the dashboard in
// its Host header, so that a page of another site whose name was made to
// point at this address (DNS rebinding) gets nothing.
type Access struct {
	// Token is the secret. A request carries it as "Authorization: Bearer
	// TOKEN" (programs, Prometheus' authorization setting), in the cookie
	// (browsers), or as ?token=TOKEN (the URL drover prints; the answer
	// sets the cookie). An empty Token lets nothing in.
	Token string
	// Cookie is the cookie's name. Browsers send a host's cookies to every
	// port of it, so it should name the port: two dashboards on one host
	// must not take each other's cookie.
	Cookie string
	// Hosts are the names (or addresses) accepted in the Host header
	// besides loopback ones: localhost, 127.0.0.0/8 and ::1.
	Hosts []string
	// MetricsOpen serves /metrics without the token.
	MetricsOpen bool
}

// NewToken makes a fresh random token.
func NewToken() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// hostAllowed reports whether the Host header hostport names this server.
func (a *Access) hostAllowed(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.ToLower(strings.Trim(host, "[]")), ".")
	if host == "" {
		return false
	}
	if host == "localhost" {
		return true
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return true
	}
	return slices.ContainsFunc(a.Hosts, func(h string) bool {
		h = strings.TrimSuffix(strings.ToLower(strings.Trim(h, "[]")), ".")
		if ip, hip := net.ParseIP(h), net.ParseIP(host); ip != nil && hip != nil {
			return ip.Equal(hip)
		}
		return h == host
	})
}

// tokenIs compares in constant time: the hashes have one length whatever
// was sent, so neither the content nor the length of the token leaks.
func (a *Access) tokenIs(got string) bool {
	if a.Token == "" {
		return false
	}
	g, w := sha256.Sum256([]byte(got)), sha256.Sum256([]byte(a.Token))
	return subtle.ConstantTimeCompare(g[:], w[:]) == 1
}

func (a *Access) cookieName() string {
	if a.Cookie == "" {
		return "drover"
	}
	return a.Cookie
}

// guard checks the Host header and the token before next serves r.
func (a *Access) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !a.hostAllowed(r.Host) {
			http.Error(w, "drover: this dashboard does not answer to the host name "+quoteHost(r.Host)+" (drover serve --http-host NAME adds names)", http.StatusMisdirectedRequest)
			return
		}
		if strings.HasPrefix(r.URL.Path, "/static/") || r.URL.Path == "/metrics" && a.MetricsOpen {
			next.ServeHTTP(w, r)
			return
		}
		var sent string
		var inQuery bool
		if auth := r.Header.Get("Authorization"); auth != "" {
			scheme, tok, _ := strings.Cut(auth, " ")
			if !strings.EqualFold(scheme, "Bearer") {
				a.refuse(w, http.StatusUnauthorized, "drover: use Authorization: Bearer TOKEN (the token is in serve.json)")
				return
			}
			sent = strings.TrimSpace(tok)
		} else if q := r.URL.Query(); q.Has("token") {
			sent, inQuery = q.Get("token"), true
		} else if c, err := r.Cookie(a.cookieName()); err == nil {
			sent = c.Value
		} else {
			a.refuse(w, http.StatusUnauthorized, "drover: this dashboard needs its token: open the URL drover printed (with ?token=), or send Authorization: Bearer TOKEN (the token is in serve.json)")
			return
		}
		if !a.tokenIs(sent) {
			a.refuse(w, http.StatusForbidden, "drover: wrong token")
			return
		}
		if inQuery {
			// The browser keeps the cookie; the token leaves the address
			// bar and the history (the fragment, e.g. #/jobs, stays).
			http.SetCookie(w, &http.Cookie{Name: a.cookieName(), Value: a.Token, Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode})
			if r.URL.Path == "/" {
				q := r.URL.Query()
				q.Del("token")
				u := url.URL{Path: "/", RawQuery: q.Encode()}
				w.Header().Set("Cache-Control", "no-store")
				http.Redirect(w, r, u.String(), http.StatusSeeOther)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

func (a *Access) refuse(w http.ResponseWriter, code int, msg string) {
	if code == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="drover"`)
	}
	w.Header().Set("Cache-Control", "no-store")
	http.Error(w, msg, code)
}

// quoteHost shows a Host header safely in a plain-text answer.
func quoteHost(h string) string {
	if len(h) > 100 {
		h = h[:100] + "..."
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return '?'
		}
		return r
	}, `"`+h+`"`)
}
