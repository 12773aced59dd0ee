// Opened from this origin, the next page receives the SameSite=Strict session cookie.
window.location.replace("/console/me");
