; Reads a generated Seatbelt profile with TinyScheme's reader (the interpreter that
; Seatbelt's SBPL is built on) and reports what a test compares: the number of
; forms, unknown parameters, and every regex and literal string as read back.
; Expects `workfence-params` (list of strings) and `workfence-profile-file`.

(define failures 0)
(define forms 0)

(define (known-param? s l)
  (cond ((null? l) #f)
        ; string=? is broken in some TinyScheme builds; interned symbols compare fine.
        ((eq? (string->symbol s) (string->symbol (car l))) #t)
        (else (known-param? s (cdr l)))))

(define (fail what x)
  (display "FAIL ") (display what) (display " ") (write x) (newline)
  (set! failures (+ failures 1)))

(define (walk x)
  (if (pair? x)
      (begin
        (if (and (symbol? (car x)) (pair? (cdr x)) (string? (cadr x)))
            (cond ((eq? (car x) 'param)
                   (if (not (known-param? (cadr x) workfence-params)) (fail "unknown-param" (cadr x))))
                  ((eq? (car x) 'regex)
                   (display "REGEX ") (display (cadr x)) (newline))
                  ((eq? (car x) 'literal)
                   (display "LITERAL ") (display (cadr x)) (newline))))
        (walk (car x))
        (walk (cdr x)))))

(define port (open-input-file workfence-profile-file))
(let loop ((f (read port)))
  (if (not (eof-object? f))
      (begin
        (set! forms (+ forms 1))
        (if (and (= forms 1) (not (and (pair? f) (eq? (car f) 'version)))) (fail "first-form" f))
        (if (not (pair? f)) (fail "not-a-form" f))
        (walk f)
        (loop (read port)))))
(display "FORMS ") (display forms) (newline)
(display "FAILURES ") (display failures) (newline)
(quit)
