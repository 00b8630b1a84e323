/*
 * Unit tests for the key sets of broker/auth_keys.c and the RS256/ES256 paths
 * of broker/auth.c: JWKS parsing (every member checked, private keys refused,
 * unusable keys skipped), key selection by kid, the algorithm confusion
 * attack, alg none, tampering, ES256 signature lengths, and reloading keys
 * from files (auth_reload) with the grant cache emptied.
 *
 * The keys and tokens below were made once, offline, by
 * tests/unit/gen_auth_jwks_vectors.py (Debian 12's python3-jwt 2.6 signing,
 * python3-cryptography 38 making RSA 2048-bit and P-256 keys; e is 65537,
 * "AQAB"). Every token carries the claims
 *   {"sub":"alice","exp":2000000000,"gale":{"sub":["user.{sub}.>"],"pub":["chat.>"]}}
 * and the header python3-jwt writes ({"alg":...,"kid":...,"typ":"JWT"}), except the HS256 ones
 * made with hmac/hashlib directly (python3-jwt refuses a PEM as an HMAC secret).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "auth.h"

static const char KEY[] = "unit-test-secret-0123456789abcdef";
#define NOW 1700000000

/* RSA_A: n (2048 bits) */
static const char RSA_A_N[] =
    "q6DQLSmPOlHA5GOHzbLj4NSz7qJ83jJYy-ameOWDsvTsJu7MfACoR1wEL4l4yXuhJAi5VESWhC3C0648R1oXYQoKRv"
    "SKUxdPxUhn98atnwbv2inEU8tL19Vn40HeqBkZajCg0NT7wmg2axH4PxAHVlKJw_B0QDEH4AbB4A2Hheu2k5MNuCNk"
    "Ueoypdr0MQxhyloMa-n24mu--dX86JQDVjbbYOCwBRcCoZ-vFP53jDJCbvK3mJlZyvfKyLzdu2tI24XeX_58SUfauf"
    "LWOFCCi2tApo_HqhgeZRpCqNzPaelvnHgPDvyA7n4pXzLLgjeoaHcyxMeMPqOazqxkWTKTuw";

/* RSA_B: n (2048 bits) */
static const char RSA_B_N[] =
    "1zyAXDKLvu80Uy5RYKDTls9JzZNsr0yZrprj-EqBAi7qNZMSOOSsBIGueF6eEC4R5VkU3WY3qpBRWlRgkmTj2Nb6F5"
    "r4OaYinddCTebWmQn_7TfekLEm5SP6Jp4CFOZQ0TCtcKhQOkpMzDKKCyliPEDDlV-BYxkxVC-QkjIh5r7wnRxsSHlo"
    "rSSd3rPZaHvu08omu0oyTLS5wt-55RyxfOiVbisB1MIMs00CFMPxXITOcYDs8-Dane2FQL32GAQdrILELyaYS16FR0"
    "0iiHPD5rnFQMt90Fj2vB--4Mxl8ll7L8NmT99Jq1-O-5DV8OpJHIXYTLzMlfgDJPJ78gcIUw";

/* RSA_1024: n (1024 bits) */
static const char RSA_1024_N[] =
    "ztfpkZZk1-P3Hhdndd3-YkyylgSthZq4xRUR9vf0wE5SsZNKVfQJp0YngBRHzc0hr0VmEv3g13f2k121dmW53K1Px1"
    "alAhpA1VysccF4EmzRAkQc0btwQsI8Kfg_nwNfQ0eUBGVElrcWz5PQWDJ1LiFodFwRxwjBQzHDkgc-kbU";

/* EC_C: x */
static const char EC_C_X[] = "LRF6igsgKOWd1WYMvjbVeMww2frgzV9pqA8xChDihYs";

/* EC_C: y */
static const char EC_C_Y[] = "qjjKB7kxxHxZX7_YUXfVHGNjEyIQaNe7G2E1aegcixo";

/* EC_D: x */
static const char EC_D_X[] = "1VwVQbPGaTjaDdIbJ9OrmIelOJT0ze87SFDOF6Lps6w";

/* EC_D: y */
static const char EC_D_Y[] = "S5HXdCAdvIAjF4sohrMiOxc3OoVib9kKIWSMCCIYza4";

/* RS256 {"kid":"rsa-a"} by RSA_A */
static const char T_RS_A[] =
    "eyJhbGciOiJSUzI1NiIsImtpZCI6InJzYS1hIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6MjAwMD"
    "AwMDAwMCwiZ2FsZSI6eyJzdWIiOlsidXNlci57c3VifS4-Il0sInB1YiI6WyJjaGF0Lj4iXX19.IEOK7doLHXuvc29"
    "hA7ycNwmztt75Cl1BtZdubUXbIivRktgCGkCBd0VXB6sLHdQIE9f2HfwMJB_TZ7Asg7hte1Tq_c9pLQk29opt-yFEZ"
    "sNBQ4Z1f-oxxBy9QTdJuLlG4aNL7c9LgcrMdAWqSOcwghVq8HldCdrf2Zzpp7gpZWHeKKj31ODu9SxIBRJEhJ_67EB"
    "DPcUDD9_q_7EoeAJKdCA_O2g-IBZ7m7kMbvHHqIJMN6vf--tTrYYdUoKSYJMcGK1JbYFrT9igJAEjCURbrn5ypAEEB"
    "WDp4fHvavaeeOPMgO8p6oiT7wvQ6Np7Kvar6AFYdkzLylrovD3BcLlL8A";

/* RS256 {"kid":"rsa-b"} by RSA_B */
static const char T_RS_B[] =
    "eyJhbGciOiJSUzI1NiIsImtpZCI6InJzYS1iIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6MjAwMD"
    "AwMDAwMCwiZ2FsZSI6eyJzdWIiOlsidXNlci57c3VifS4-Il0sInB1YiI6WyJjaGF0Lj4iXX19.gzBa5VnyfVzrBG-"
    "GpR7IhhsVeXw2y7pUCizfFcLP34sfxjq1Gf8nLwAUF59Rv8ZncbaR330zUm6mIi_wEohaLawk7s6PiYC8ViH7xDUVW"
    "8iURCAUmOW7oB1Ean7Oz4EOVeKaGIWS_dZ_7cGOQRAlG0--twfhKO9PwidAhk0aP9sj_RY6K5ZVwApAIgH32259XAv"
    "GNt1S_qC2pQT_KIJC_2FxOWSQU6DixYboIht1A26_Erdd8batdESEO_spJd5dhbclVWnb90Vj6Zt1KG5Cp3Upb0iXm"
    "W1b9Alapbvwwt1mXthKKjJISYjMGJAqUMEj8Smo_ukKk5QP3UVMzLJwsA";

/* RS256, no kid, by RSA_A */
static const char T_RS_NOKID[] =
    "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6MjAwMDAwMDAwMCwiZ2FsZSI6e"
    "yJzdWIiOlsidXNlci57c3VifS4-Il0sInB1YiI6WyJjaGF0Lj4iXX19.bLjGfJtBCOblEuXAnUlLYtRadcg3f-93_L"
    "KM5o3senPpFHUMWZrSveNL-hMKIF_W8HpVTI7-ZJOrBFrjJrOXN14I9Y4N32pu6fpMr3WxsWmSp320bG46ghSK7nSX"
    "HqeWf9Yq30zbnJmOxyw_oolZKgJVeioYbSBnXjUpCKw8nrQGw-YSjNJkJo1OIRDQqt9dj9Gri_ej4-m_4ej86gk3J_"
    "fwgs4cJbydRGjLcKeKzcfyde03MfX6YMCmmfMm22AfNE_c98QUVcM21zm7s52B6O0WRRLt12xrrnagClNTqfIL0Hhq"
    "VWKv7_XFLtrM7dJpwHr9cBxKG10EVawONhrc3g";

/* RS256 {"kid":"rsa-a"} but by RSA_B */
static const char T_RS_B_AS_A[] =
    "eyJhbGciOiJSUzI1NiIsImtpZCI6InJzYS1hIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6MjAwMD"
    "AwMDAwMCwiZ2FsZSI6eyJzdWIiOlsidXNlci57c3VifS4-Il0sInB1YiI6WyJjaGF0Lj4iXX19.JmPv533yAvZzrcS"
    "UyFhND5O-s1_5AVMWoih-5XM8l8Uu4kjruS8mH6oY-Q113PjAna48qTT2hbHiV1RdE_tbpFuK5TPzbBJvg5Z8Gd0Ti"
    "el-lhZV3trye5ojv78Kt3LYV45zAZE-mJBz_vUpkT2wPQRMcnmUHvh5dSxpQtbNOYaQL8gWTKaw4wVwrGSDFigwtSR"
    "Ywzw3kLCLze6OSJGiP1NsAUjQC_F-g2XtP3vJaWBAwlQyrkBNQcz6SzEduLLjraK3ydsyheo-RVzHN_VjSkWEP1Tqp"
    "WwPFRZfe1mc95AKDXOaXld6mTyJjQV36NQKahv1kb4M4q-lZe_NaKY3dQ";

/* RS256 {"kid":"nope"} by RSA_A */
static const char T_RS_UNKNOWN[] =
    "eyJhbGciOiJSUzI1NiIsImtpZCI6Im5vcGUiLCJ0eXAiOiJKV1QifQ.eyJzdWIiOiJhbGljZSIsImV4cCI6MjAwMDA"
    "wMDAwMCwiZ2FsZSI6eyJzdWIiOlsidXNlci57c3VifS4-Il0sInB1YiI6WyJjaGF0Lj4iXX19.TD1KOBPgNH-Th0Xp"
    "OsZVJHfk1gox7OauXSpQjalBvZBu-mmrdAn4WiNOvj6Hz8OmSIISeyNtDrcvy2ucnGfIMxURYViOIwx9i4AYDRvHLX"
    "-MyzdKiHBsRXNaBYAKJYaLclzsbLIiom2ylYdUz3tq-zMrDCwdtW5SJImKJyHrip8nYh75AVj-UcD7tJSDW5Da5B6q"
    "8URCmabw_XIJVFuOqqMlgrvD63GUPA1GnBdz9KdBMMoN8aoXRmF8vQN9pBw3UrEHRBaSyVD2Q3JAoAllG8KXnERmvi"
    "mA6BZkdDlqcu2hJsbLPZohxaXotOZvYbeX8YJWbX4nVfqmlakqMbai6A";

/* RS256 {"kid":"ec-c"} by RSA_A */
static const char T_RS_KID_EC[] =
    "eyJhbGciOiJSUzI1NiIsImtpZCI6ImVjLWMiLCJ0eXAiOiJKV1QifQ.eyJzdWIiOiJhbGljZSIsImV4cCI6MjAwMDA"
    "wMDAwMCwiZ2FsZSI6eyJzdWIiOlsidXNlci57c3VifS4-Il0sInB1YiI6WyJjaGF0Lj4iXX19.qyn-XmRoCjkrkG7w"
    "a4LAVQoKhlwqfHXrc5ERrIAZmM3Gt8z5B8_h4YQTXQhu9PiDOEFSjraRs538nChuL-z68GH0_hcFAClN4dz_OzIQne"
    "7DSKJpL93yBJJ9w14HwjaJnNqcwRV_rHt7lyxEUzRDMNiHYUtIoc97_rmUxzrSe0WP4p5jMXIordIEW_BkUbNB5Jut"
    "o5QVT0uSCxFC2LwLaSEfD-h1qtFXaUJc2br_yO9dxzrWCQeXJH8wRR14yPlWdIiYaGick9dj3aIZt5x33ZgnAJORIw"
    "F-dhmMBLB9yAfBZ9LHPWkk3hqLSCGRBgyuhH7TKFjYRECWozVwdRaxEQ";

/* RS256 {"alg":"RS256","kid":"rsa-\u0061"} (the kid escaped) by RSA_A */
static const char T_RS_KID_ESC[] =
    "eyJhbGciOiJSUzI1NiIsImtpZCI6InJzYS1cdTAwNjEifQ.eyJzdWIiOiJhbGljZSIsImV4cCI6MjAwMDAwMDAwMCw"
    "iZ2FsZSI6eyJzdWIiOlsidXNlci57c3VifS4-Il0sInB1YiI6WyJjaGF0Lj4iXX19.jm7z-SHsGdUiyv3F0zXlimqJ"
    "aFMRdndAWvzzwMAk61Bh8MWgrPrB9QB8IPykUJwhz6u4N3FasZDRHGo-gBe5qNYR6Gw7XoSNnWPZtm4GLjL1mCrDeM"
    "LPSeM4zBL-gV4kMCZy-Od0FQjfBnDnjuHzFfgve2RUoMvUODlvLsTnn050LKmLMFodA1FN4VHUcRMoz2Q-Pq2ilCM3"
    "s9ljBYcrpQB2HNesK13z1DQv1r7OEiEqylhypEbwDhdsBwEwqIVE75-ABsONgiFs7RMSPezC5gKDIceN-18aLRaTrP"
    "Z7YuYl1AqEPlQug38XgAn5lpCGuN_DGvwnXMaUw-7Ub6uCDA";

/* RS256 {"alg":"RS256","kid":"rsa-a","jku":"http://evil/","jwk":{"kty":"oct","k":"AA"},"x5u":"x"}
 * by RSA_A */
static const char T_RS_JKU[] =
    "eyJhbGciOiJSUzI1NiIsImtpZCI6InJzYS1hIiwiamt1IjoiaHR0cDovL2V2aWwvIiwiandrIjp7Imt0eSI6Im9jdC"
    "IsImsiOiJBQSJ9LCJ4NXUiOiJ4In0.eyJzdWIiOiJhbGljZSIsImV4cCI6MjAwMDAwMDAwMCwiZ2FsZSI6eyJzdWIi"
    "OlsidXNlci57c3VifS4-Il0sInB1YiI6WyJjaGF0Lj4iXX19.SgfdjOKExlVcir69YIyXz-zLeoXXtPNQHHsctiCTb"
    "nFTSf44BJEOUuPQV2Lqh_PjlDew9WoczPdCReTe-cJ01ckvlndPXPzsbsgFbwhId2owgFNxE7evxuLnSbQAvjruXng"
    "g0eNQWAaHpGYeQTOaAJnHfOxIm2arojNqvhCqmx6YW4bn2HXieL4wzuAV6D_NDjYawOf8VrZoGSsouqVvEWqAQ8SXT"
    "IUkpqs0l7wtFIuayaGGfCFJn-uOE_sBhOAsDANSniKbWCUP7lVtDnz5Fo1tdMnCwUSuwdDTM_Z6B1ztNFR8bAs4h41"
    "P0rwfWJKmeyhX1iaDkwRXB15AeQj4MA";

/* ES256 {"kid":"ec-c"} by EC_C */
static const char T_ES_C[] =
    "eyJhbGciOiJFUzI1NiIsImtpZCI6ImVjLWMiLCJ0eXAiOiJKV1QifQ.eyJzdWIiOiJhbGljZSIsImV4cCI6MjAwMDA"
    "wMDAwMCwiZ2FsZSI6eyJzdWIiOlsidXNlci57c3VifS4-Il0sInB1YiI6WyJjaGF0Lj4iXX19.A9_YNomjptPlwXUF"
    "NOKXMFChqByeYf8W3xCcME1EhxSb_2BHBafTGObXA-6UEt15SjWHImKbxK4qiwCd7NfH9A";

/* ES256 {"kid":"ec-d"} by EC_D */
static const char T_ES_D[] =
    "eyJhbGciOiJFUzI1NiIsImtpZCI6ImVjLWQiLCJ0eXAiOiJKV1QifQ.eyJzdWIiOiJhbGljZSIsImV4cCI6MjAwMDA"
    "wMDAwMCwiZ2FsZSI6eyJzdWIiOlsidXNlci57c3VifS4-Il0sInB1YiI6WyJjaGF0Lj4iXX19.u19ekJa4aIiVqCXg"
    "lExmKLYGJsI6ZkdO8n3_tj-AqreUBl4mhfqf7OYvF5b3uASMi4jmCaLZf23j4BbNhOomcQ";

/* ES256, no kid, by EC_C */
static const char T_ES_NOKID[] =
    "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6MjAwMDAwMDAwMCwiZ2FsZSI6e"
    "yJzdWIiOlsidXNlci57c3VifS4-Il0sInB1YiI6WyJjaGF0Lj4iXX19.mhfOXiOFG8d1fN9s0PFeyNBLUbM_vARbHU"
    "gy-GmElK_rXGU670Kt4UG7MxeD7IJcAq3rAdh0TTE-mJfBlh9MPg";

/* ES256 {"kid":"ec-c"} but by EC_D */
static const char T_ES_D_AS_C[] =
    "eyJhbGciOiJFUzI1NiIsImtpZCI6ImVjLWMiLCJ0eXAiOiJKV1QifQ.eyJzdWIiOiJhbGljZSIsImV4cCI6MjAwMDA"
    "wMDAwMCwiZ2FsZSI6eyJzdWIiOlsidXNlci57c3VifS4-Il0sInB1YiI6WyJjaGF0Lj4iXX19.JPMjo3fU_MiYAbb6"
    "63AzMw8gbzxFsjojnOkbomh0bGzDUZYw6LNEIIRn4uhGVFgblX3SqBUT_jtuqxM86RnKcg";

/* ES256 {"kid":"rsa-a"} by EC_C */
static const char T_ES_KID_RSA[] =
    "eyJhbGciOiJFUzI1NiIsImtpZCI6InJzYS1hIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6MjAwMD"
    "AwMDAwMCwiZ2FsZSI6eyJzdWIiOlsidXNlci57c3VifS4-Il0sInB1YiI6WyJjaGF0Lj4iXX19.hjPrgr_Wdv7egBo"
    "oZz_sHk_A_25MqNLN8Rf16BZVoaTf2snydNwFDiKTknWexoFH7MoQI8x77aoRZXr_O5fcXQ";

/* ES256 {"kid":"ec-c"} by EC_C, the signature DER-encoded (not r||s) */
static const char T_ES_DER[] =
    "eyJhbGciOiJFUzI1NiIsImtpZCI6ImVjLWMifQ.eyJzdWIiOiJhbGljZSIsImV4cCI6MjAwMDAwMDAwMCwiZ2FsZSI"
    "6eyJzdWIiOlsidXNlci57c3VifS4-Il0sInB1YiI6WyJjaGF0Lj4iXX19.MEUCIQCeZII7T-qStm_0JwAXYt5-hUf8"
    "POUC-s4UGlAEnvexFgIgBon9FYgYQh6uNxHgboCDzHpxdJAAJyfknD8GlkAvCDs";

/* HS256 {"kid":"rsa-a"}, the MAC keyed with RSA_A's public key PEM */
static const char T_HS_PEM[] =
    "eyJhbGciOiJIUzI1NiIsImtpZCI6InJzYS1hIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6MjAwMDAwMDAwMCwiZ2FsZS"
    "I6eyJzdWIiOlsidXNlci57c3VifS4-Il0sInB1YiI6WyJjaGF0Lj4iXX19.X-PNZ78GkVbLBLcNMQBNAWcHmiGRV3X"
    "JaEPnG_wMh7w";

/* HS256, the MAC keyed with RSA_A's public key PEM */
static const char T_HS_PEM_NOKID[] =
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6MjAwMDAwMDAwMCwiZ2FsZSI6eyJzdWIiOlsidXNlc"
    "i57c3VifS4-Il0sInB1YiI6WyJjaGF0Lj4iXX19.ltmfA3QaacbVXs5DNp152kXmPQQfTDZW0SWkQjtdQbs";

/* HS256 {"kid":"rsa-a"}, the MAC keyed with RSA_A's public key DER */
static const char T_HS_DER[] =
    "eyJhbGciOiJIUzI1NiIsImtpZCI6InJzYS1hIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6MjAwMDAwMDAwMCwiZ2FsZS"
    "I6eyJzdWIiOlsidXNlci57c3VifS4-Il0sInB1YiI6WyJjaGF0Lj4iXX19.ug1uODDp_c0L8bgCqa3kV9eFvDzDogQ"
    "lKs79ztgrpn8";

/* HS256 {"kid":"ec-c"}, the MAC keyed with EC_C's public key PEM */
static const char T_HS_ECPEM[] =
    "eyJhbGciOiJIUzI1NiIsImtpZCI6ImVjLWMifQ.eyJzdWIiOiJhbGljZSIsImV4cCI6MjAwMDAwMDAwMCwiZ2FsZSI"
    "6eyJzdWIiOlsidXNlci57c3VifS4-Il0sInB1YiI6WyJjaGF0Lj4iXX19.dH6qBy8NHY7Wv-UL0IRw6xKvSldb9LIv"
    "LDzZkeFmvgM";

/* HS256 with the unit tests' secret KEY */
static const char T_HS_SECRET[] =
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6MjAwMDAwMDAwMCwiZ2FsZSI6e"
    "yJzdWIiOlsidXNlci57c3VifS4-Il0sInB1YiI6WyJjaGF0Lj4iXX19.PBSOROiElnDSj_g59aTlil8jbdq8mbJ7Je"
    "vPJgeWRSM";

/* --- helpers ------------------------------------------------------------------------- */

/* printf into one of a few rotating buffers (a test builds a document from several). */
static const char *fmt(const char *f, ...) __attribute__((format(printf, 1, 2)));
static const char *fmt(const char *f, ...)
{
    static char bufs[8][16384];
    static int i;
    char *b = bufs[i++ % 8];
    va_list ap;
    va_start(ap, f);
    int n = vsnprintf(b, sizeof(bufs[0]), f, ap);
    va_end(ap);
    assert_true(n > 0 && (size_t)n < sizeof(bufs[0]));
    return b;
}

static const char *rsa_jwk(const char *kid, const char *n)
{
    return fmt("{\"kty\":\"RSA\",\"kid\":\"%s\",\"use\":\"sig\",\"alg\":\"RS256\",\"n\":\"%s\","
               "\"e\":\"AQAB\"}",
               kid, n);
}

static const char *ec_jwk(const char *kid, const char *x, const char *y)
{
    return fmt("{\"kty\":\"EC\",\"kid\":\"%s\",\"crv\":\"P-256\",\"x\":\"%s\",\"y\":\"%s\"}", kid,
               x, y);
}

/* The four keys, each with its kid. */
static const char *all_jwks(void)
{
    return fmt("{\"keys\":[%s,%s,%s,%s]}", rsa_jwk("rsa-a", RSA_A_N), rsa_jwk("rsa-b", RSA_B_N),
               ec_jwk("ec-c", EC_C_X, EC_C_Y), ec_jwk("ec-d", EC_D_X, EC_D_Y));
}

typedef struct {
    int n;
    char last[512];
} notes_t;

static void note(void *arg, const char *msg)
{
    notes_t *ns = arg;
    ns->n++;
    snprintf(ns->last, sizeof(ns->last), "%s", msg);
}

/* A key set of secret (NULL: none) and the JWKS json; NULL with err when refused. */
static auth_keys_t *keys_of(const char *secret, const char *json, notes_t *ns, char *err,
                            size_t cap)
{
    auth_keys_t *k = auth_keys_new((const uint8_t *)secret, secret ? strlen(secret) : 0);
    assert_non_null(k);
    err[0] = '\0';
    if (json && !auth_keys_add_jwks(k, (const uint8_t *)json, strlen(json), note, ns, err, cap)) {
        assert_true(err[0] != '\0');
        assert_int_equal(auth_keys_count(k), 0); /* unchanged */
        auth_keys_free(k);
        return NULL;
    }
    return k;
}

static auth_keys_t *must_load(const char *secret, const char *json)
{
    char err[512];
    notes_t ns = {0};
    auth_keys_t *k = keys_of(secret, json, &ns, err, sizeof(err));
    if (!k)
        fail_msg("JWKS refused: %s\n%s", err, json);
    return k;
}

/* JWKS json is refused with an error containing want. */
static void refused_jwks(const char *json, const char *want)
{
    char err[512];
    notes_t ns = {0};
    auth_keys_t *k = keys_of(NULL, json, &ns, err, sizeof(err));
    if (k)
        fail_msg("JWKS accepted: %s", json);
    if (!strstr(err, want))
        fail_msg("JWKS refused with \"%s\", expected \"%s\": %s", err, want, json);
}

static void accepted(const auth_keys_t *k, const char *tok)
{
    const char *why = NULL;
    auth_grant_t *g = auth_verify_keys(k, tok, strlen(tok), NOW, &why);
    if (!g)
        fail_msg("refused (%s): %s", why, tok);
    assert_string_equal(g->user, "alice");
    assert_int_equal(g->exp, 2000000000);
    assert_int_equal(g->nsub, 1);
    assert_string_equal(g->sub[0], "user.alice.>");
    assert_int_equal(g->npub, 1);
    assert_string_equal(g->pub[0], "chat.>");
    assert_int_equal(g->token_len, strlen(tok));
    auth_grant_free(g);
}

/* tok[0..len) is refused, with a why containing want (NULL: any). */
static void refused_n(const auth_keys_t *k, const char *tok, size_t len, const char *want)
{
    const char *why = NULL;
    auth_grant_t *g = auth_verify_keys(k, tok, len, NOW, &why);
    if (g)
        fail_msg("accepted: %.*s", (int)len, tok);
    assert_non_null(why);
    if (want && !strstr(why, want))
        fail_msg("refused with \"%s\", expected \"%s\": %.*s", why, want, (int)len, tok);
}

static void refused(const auth_keys_t *k, const char *tok, const char *want)
{
    refused_n(k, tok, strlen(tok), want);
}

static size_t b64url(const uint8_t *in, size_t n, char *out)
{
    static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < n)
            v |= in[i + 2];
        out[o++] = a[(v >> 18) & 63];
        out[o++] = a[(v >> 12) & 63];
        if (i + 1 < n)
            out[o++] = a[(v >> 6) & 63];
        if (i + 2 < n)
            out[o++] = a[v & 63];
    }
    out[o] = '\0';
    return o;
}

/* tok with its header replaced by hdr (JSON), payload and signature kept. */
static const char *with_header(const char *tok, const char *hdr)
{
    char h[1024];
    assert_true(strlen(hdr) < 700);
    b64url((const uint8_t *)hdr, strlen(hdr), h);
    return fmt("%s%s", h, strchr(tok, '.'));
}

/* --- tests ----------------------------------------------------------------------------- */

static void test_rs256_es256_valid(void **state)
{
    (void)state;
    auth_keys_t *k = must_load(NULL, all_jwks());
    assert_int_equal(auth_keys_count(k), 4);
    assert_false(auth_keys_has_secret(k));
    accepted(k, T_RS_A);
    accepted(k, T_RS_B);
    accepted(k, T_ES_C);
    accepted(k, T_ES_D);
    /* Claims are checked as for HS256: expired at exp. */
    const char *why;
    assert_null(auth_verify_keys(k, T_RS_A, strlen(T_RS_A), 2000000000, &why));
    assert_string_equal(why, "the token has expired");
    assert_null(auth_verify_keys(k, T_ES_C, strlen(T_ES_C), 2000000000, &why));
    auth_keys_free(k);
}

static void test_wrong_key(void **state)
{
    (void)state;
    auth_keys_t *k = must_load(NULL, all_jwks());
    refused(k, T_RS_B_AS_A, "bad signature");
    refused(k, T_ES_D_AS_C, "bad signature");
    auth_keys_free(k);
    /* A set without the signer's key. */
    k = must_load(
        NULL, fmt("{\"keys\":[%s,%s]}", rsa_jwk("rsa-a", RSA_B_N), ec_jwk("ec-c", EC_D_X, EC_D_Y)));
    refused(k, T_RS_A, "bad signature");
    refused(k, T_ES_C, "bad signature");
    accepted(k, T_RS_B_AS_A);
    accepted(k, T_ES_D_AS_C);
    auth_keys_free(k);
}

static void test_kid_selection(void **state)
{
    (void)state;
    auth_keys_t *k = must_load(NULL, all_jwks());
    refused(k, T_RS_UNKNOWN, "unknown kid");
    refused(k, T_RS_KID_EC, "alg RS256 does not fit the key: it is an EC key");
    refused(k, T_ES_KID_RSA, "alg ES256 does not fit the key: it is an RSA key");
    /* Several keys and no kid: no guessing. */
    refused(k, T_RS_NOKID, "no kid");
    refused(k, T_ES_NOKID, "no kid");
    /* kids compare unescaped and exactly. */
    accepted(k, T_RS_KID_ESC);
    refused(k, with_header(T_RS_A, "{\"alg\":\"RS256\",\"kid\":\"RSA-A\",\"typ\":\"JWT\"}"),
            "unknown kid");
    refused(k, with_header(T_RS_A, "{\"alg\":\"RS256\",\"kid\":\"\",\"typ\":\"JWT\"}"),
            "unknown kid");
    auth_keys_free(k);
}

static void test_missing_kid(void **state)
{
    (void)state;
    /* Exactly one key: a token without kid uses it, whether the key has a kid or not. */
    auth_keys_t *k = must_load(NULL, fmt("{\"keys\":[%s]}", rsa_jwk("rsa-a", RSA_A_N)));
    accepted(k, T_RS_NOKID);
    accepted(k, T_RS_A);
    refused(k, T_ES_NOKID, "alg ES256 does not fit the key: it is an RSA key");
    refused(k, T_RS_B, "unknown kid");
    auth_keys_free(k);
    k = must_load(NULL, fmt("{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"%s\",\"y\":"
                            "\"%s\"}]}",
                            EC_C_X, EC_C_Y));
    accepted(k, T_ES_NOKID);
    refused(k, T_ES_C, "unknown kid"); /* the key has no kid: a kid names another key */
    refused(k, T_RS_NOKID, "alg RS256 does not fit the key: it is an EC key");
    auth_keys_free(k);
    /* Two keys: a kid is needed. */
    k = must_load(
        NULL, fmt("{\"keys\":[%s,%s]}", rsa_jwk("rsa-a", RSA_A_N), ec_jwk("ec-c", EC_C_X, EC_C_Y)));
    refused(k, T_RS_NOKID, "the token has no kid and the JWKS holds several keys");
    refused(k, T_ES_NOKID, "the token has no kid and the JWKS holds several keys");
    accepted(k, T_RS_A);
    accepted(k, T_ES_C);
    auth_keys_free(k);
}

/* HS256 only ever uses the secret: a MAC keyed with a public key's bytes is no signature. */
static void test_confusion(void **state)
{
    (void)state;
    auth_keys_t *k = must_load(NULL, all_jwks());
    refused(k, T_HS_PEM, "HS256 tokens are not accepted");
    refused(k, T_HS_PEM_NOKID, "HS256 tokens are not accepted");
    refused(k, T_HS_DER, "HS256 tokens are not accepted");
    refused(k, T_HS_ECPEM, "HS256 tokens are not accepted");
    refused(k, T_HS_SECRET, "HS256 tokens are not accepted");
    auth_keys_free(k);
    /* With a secret as well: HS256 verifies with it, and only it. */
    k = must_load(KEY, all_jwks());
    assert_true(auth_keys_has_secret(k));
    refused(k, T_HS_PEM, "bad signature");
    refused(k, T_HS_PEM_NOKID, "bad signature");
    refused(k, T_HS_DER, "bad signature");
    refused(k, T_HS_ECPEM, "bad signature");
    accepted(k, T_HS_SECRET);
    accepted(k, T_RS_A);
    accepted(k, T_ES_C);
    /* An RS256/ES256 header over an HS256 MAC, and the reverse. */
    refused(k, with_header(T_HS_SECRET, "{\"alg\":\"RS256\",\"kid\":\"rsa-a\"}"),
            "not an RS256 signature");
    refused(k, with_header(T_HS_SECRET, "{\"alg\":\"ES256\",\"kid\":\"ec-c\"}"),
            "not an ES256 signature");
    refused(k, with_header(T_RS_A, "{\"alg\":\"HS256\",\"kid\":\"rsa-a\"}"),
            "not an HS256 signature");
    auth_keys_free(k);
    /* The secret alone: RS256 and ES256 have no key. */
    k = must_load(KEY, NULL);
    refused(k, T_RS_A, "no JWKS keys are configured");
    refused(k, T_ES_C, "no JWKS keys are configured");
    accepted(k, T_HS_SECRET);
    auth_keys_free(k);
}

static void test_none_and_other_algs(void **state)
{
    (void)state;
    auth_keys_t *k = must_load(KEY, all_jwks());
    const char *payload = strchr(T_RS_A, '.') + 1;
    size_t plen = (size_t)(strchr(payload, '.') - payload);
    char h[128], t[2048];
    /* {"alg":"none"}: unsigned, and with a signature anyway. */
    b64url((const uint8_t *)"{\"alg\":\"none\",\"kid\":\"rsa-a\"}", 28, h);
    snprintf(t, sizeof(t), "%s.%.*s.", h, (int)plen, payload);
    refused(k, t, NULL);
    refused(k, with_header(T_RS_A, "{\"alg\":\"none\",\"kid\":\"rsa-a\"}"), "alg none is refused");
    refused(k, with_header(T_RS_A, "{\"alg\":\"none\"}"), "alg none is refused");
    refused(k, with_header(T_RS_A, "{\"alg\":\"None\"}"), "must be HS256, RS256 or ES256");
    static const char *const others[] = {
        "{\"alg\":\"RS384\",\"kid\":\"rsa-a\"}",   "{\"alg\":\"PS256\",\"kid\":\"rsa-a\"}",
        "{\"alg\":\"ES384\",\"kid\":\"ec-c\"}",    "{\"alg\":\"rs256\",\"kid\":\"rsa-a\"}",
        "{\"alg\":\"RS256 \",\"kid\":\"rsa-a\"}",  "{\"alg\":\"R\\u0053256\",\"kid\":\"rsa-a\"}",
        "{\"alg\":[\"RS256\"],\"kid\":\"rsa-a\"}", "{\"alg\":null,\"kid\":\"rsa-a\"}",
        "{\"alg\":\"EdDSA\",\"kid\":\"rsa-a\"}",
    };
    for (size_t i = 0; i < sizeof(others) / sizeof(others[0]); i++)
        refused(k, with_header(T_RS_A, others[i]), "must be HS256, RS256 or ES256");
    refused(k, with_header(T_RS_A, "{\"kid\":\"rsa-a\"}"), "no alg");
    /* Header hostility. */
    refused(k, with_header(T_RS_A, "{\"alg\":\"RS256\",\"kid\":\"rsa-a\",\"kid\":\"rsa-a\"}"),
            "duplicate kid");
    refused(k, with_header(T_RS_A, "{\"alg\":\"RS256\",\"kid\":\"rsa-a\",\"alg\":\"RS256\"}"),
            "duplicate alg");
    refused(k, with_header(T_RS_A, "{\"alg\":\"RS256\",\"kid\":5}"), "kid is not a string");
    refused(k, with_header(T_RS_A, "{\"alg\":\"RS256\",\"kid\":null}"), "kid is not a string");
    refused(k, with_header(T_RS_A, "{\"alg\":\"RS256\",\"kid\":\"rsa-a\",\"crit\":[\"exp\"]}"),
            "crit");
    refused(k, with_header(T_RS_A, "[\"RS256\"]"), "not a base64url JSON object");
    refused(k, with_header(T_RS_A, fmt("{\"alg\":\"RS256\",\"kid\":\"%0300d\"}", 0)),
            "kid is not a string of at most 255 bytes");
    /* Keys named in the header are never fetched nor used. */
    accepted(k, T_RS_JKU);
    auth_keys_free(k);
}

static void test_tampered(void **state)
{
    (void)state;
    auth_keys_t *k = must_load(NULL, all_jwks());
    const char *toks[] = {T_RS_A, T_ES_C};
    char t[2048];
    for (size_t j = 0; j < 2; j++) {
        size_t n = strlen(toks[j]);
        /* Every single-character change is refused (the signature covers it, or it breaks it). */
        for (size_t i = 0; i < n; i++) {
            if (toks[j][i] == '.')
                continue;
            memcpy(t, toks[j], n + 1);
            t[i] = t[i] == 'A' ? 'B' : 'A';
            refused(k, t, NULL);
        }
        /* Other claims under this header and signature. */
        static const char claims[] = "{\"sub\":\"mallory\",\"gale\":{\"sub\":[\">\"]}}";
        char p[128];
        const char *p1 = strchr(toks[j], '.'), *s1 = strrchr(toks[j], '.');
        b64url((const uint8_t *)claims, strlen(claims), p);
        snprintf(t, sizeof(t), "%.*s.%s%s", (int)(p1 - toks[j]), toks[j], p, s1);
        refused(k, t, "bad signature");
    }
    auth_keys_free(k);
}

static void test_signature_lengths(void **state)
{
    (void)state;
    auth_keys_t *k = must_load(NULL, all_jwks());
    char t[2048];
    size_t n = strlen(T_ES_C);
    refused(k, T_ES_DER, "not an ES256 signature (r||s, 64 bytes)");
    refused_n(k, T_ES_C, n - 2, "not an ES256 signature"); /* 63 bytes */
    snprintf(t, sizeof(t), "%sAA", T_ES_C);                /* 65 bytes */
    refused(k, t, "not an ES256 signature");
    refused_n(k, T_ES_C, n - 1, "base64url"); /* a length of 1 mod 4 */
    n = strlen(T_RS_A);
    refused_n(k, T_RS_A, n - 2, "not an RS256 signature of the key's size");
    snprintf(t, sizeof(t), "%sAA", T_RS_A);
    refused(k, t, "not an RS256 signature of the key's size");
    /* r = 0, s = 0, and r = s = n (the curve's order): never valid. */
    const char *dot = strrchr(T_ES_C, '.');
    uint8_t zero[64] = {0};
    char sig[128];
    b64url(zero, 64, sig);
    snprintf(t, sizeof(t), "%.*s.%s", (int)(dot - T_ES_C), T_ES_C, sig);
    refused(k, t, "bad signature");
    static const uint8_t order[32] = {0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00,
                                      0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                                      0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84,
                                      0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51};
    uint8_t rs[64];
    memcpy(rs, order, 32);
    memcpy(rs + 32, order, 32);
    b64url(rs, 64, sig);
    snprintf(t, sizeof(t), "%.*s.%s", (int)(dot - T_ES_C), T_ES_C, sig);
    refused(k, t, "bad signature");
    auth_keys_free(k);
}

static void test_jwks_refused(void **state)
{
    (void)state;
    char a[1024]; /* fmt's buffers rotate */
    snprintf(a, sizeof(a), "%s", rsa_jwk("rsa-a", RSA_A_N));
    /* The document. */
    refused_jwks("", "not well-formed JSON");
    refused_jwks("{", "not well-formed JSON");
    refused_jwks("{\"keys\":[]} x", "not well-formed JSON");
    refused_jwks("{\"keys\":[\"\xff\"]}", "not well-formed JSON");
    refused_jwks("[]", "not a JSON object");
    refused_jwks("null", "not a JSON object");
    refused_jwks("{}", "no \"keys\" member");
    refused_jwks(fmt("{\"kty\":\"RSA\",\"n\":\"%s\",\"e\":\"AQAB\"}", RSA_A_N),
                 "no \"keys\" member"); /* one JWK, not a set */
    refused_jwks("{\"keys\":{}}", "\"keys\" is not an array");
    refused_jwks("{\"keys\":null}", "\"keys\" is not an array");
    refused_jwks(fmt("{\"keys\":[%s],\"keys\":[%s]}", a, a), "duplicate \"keys\"");
    refused_jwks("{\"keys\":[]}", "no keys");
    refused_jwks("{\"keys\":[1]}", "keys[0]: not an object");
    refused_jwks(fmt("{\"keys\":[%s,[]]}", a), "keys[1]: not an object");
    refused_jwks("{\"keys\":[{\"a\":[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]}]}",
                 "not well-formed JSON");
    /* Members of the wrong type, duplicates. */
    refused_jwks("{\"keys\":[{\"kid\":\"x\"}]}", "keys[0] (kid \"x\"): no kty");
    refused_jwks("{\"keys\":[{\"kty\":5}]}", "keys[0]: kty: not a string");
    refused_jwks("{\"keys\":[{\"kty\":\"RSA\",\"kty\":\"RSA\"}]}", "kty: duplicate member");
    refused_jwks("{\"keys\":[{\"kty\":\"RSA\",\"k\\u0074y\":\"RSA\"}]}", "kty: duplicate member");
    refused_jwks(
        fmt("{\"keys\":[{\"kty\":\"RSA\",\"kid\":5,\"n\":\"%s\",\"e\":\"AQAB\"}]}", RSA_A_N),
        "kid: not a string");
    static const char *const bad_kids[] = {"\"\"", "\"a\\nb\"", "\"a\\u007fb\"", "\"a\\u0000\""};
    for (size_t i = 0; i < sizeof(bad_kids) / sizeof(bad_kids[0]); i++)
        refused_jwks(fmt("{\"keys\":[{\"kty\":\"RSA\",\"kid\":%s,\"n\":\"%s\",\"e\":\"AQAB\"}]}",
                         bad_kids[i], RSA_A_N),
                     "kid: not 1 to 255 bytes without control characters");
    refused_jwks(fmt("{\"keys\":[%s]}", rsa_jwk(fmt("%0256d", 0), RSA_A_N)),
                 "kid: not 1 to 255 bytes");
    refused_jwks(
        fmt("{\"keys\":[{\"kty\":\"RSA\",\"use\":1,\"n\":\"%s\",\"e\":\"AQAB\"}]}", RSA_A_N),
        "use: not a string");
    refused_jwks(
        fmt("{\"keys\":[{\"kty\":\"RSA\",\"alg\":[],\"n\":\"%s\",\"e\":\"AQAB\"}]}", RSA_A_N),
        "alg: not a string");
    refused_jwks(fmt("{\"keys\":[{\"kty\":\"RSA\",\"key_ops\":\"verify\",\"n\":\"%s\",\"e\":"
                     "\"AQAB\"}]}",
                     RSA_A_N),
                 "key_ops: not an array of strings");
    refused_jwks(fmt("{\"keys\":[{\"kty\":\"RSA\",\"key_ops\":[\"verify\",1],\"n\":\"%s\",\"e\":"
                     "\"AQAB\"}]}",
                     RSA_A_N),
                 "key_ops: not an array of strings");
    refused_jwks("{\"keys\":[{\"kty\":\"RSA\",\"n\":5,\"e\":\"AQAB\"}]}", "n: not a string");
    refused_jwks(fmt("{\"keys\":[{\"kty\":\"RSA\",\"n\":\"%s\",\"e\":65537}]}", RSA_A_N),
                 "e: not a string");
    refused_jwks("{\"keys\":[{\"kty\":\"EC\",\"crv\":256}]}", "crv: not a string");
    refused_jwks(fmt("{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":[\"%s\"],\"y\":\"%s\"}]}",
                     EC_C_X, EC_C_Y),
                 "x: not a string");
    refused_jwks(fmt("{\"keys\":[{\"kty\":\"RSA\",\"n\":\"%s\",\"n\":\"%s\",\"e\":\"AQAB\"}]}",
                     RSA_A_N, RSA_A_N),
                 "n: duplicate member");
    /* RSA values. */
    refused_jwks("{\"keys\":[{\"kty\":\"RSA\",\"e\":\"AQAB\"}]}", "keys[0]: no n");
    refused_jwks(fmt("{\"keys\":[{\"kty\":\"RSA\",\"n\":\"%s\"}]}", RSA_A_N), "keys[0]: no e");
    refused_jwks(fmt("{\"keys\":[{\"kty\":\"RSA\",\"n\":\"%s==\",\"e\":\"AQAB\"}]}", RSA_A_N),
                 "n: not base64url");
    refused_jwks(fmt("{\"keys\":[{\"kty\":\"RSA\",\"n\":\"+%s\",\"e\":\"AQAB\"}]}", RSA_A_N + 1),
                 "n: not base64url");
    refused_jwks(fmt("{\"keys\":[{\"kty\":\"RSA\",\"n\":\" %s\",\"e\":\"AQAB\"}]}", RSA_A_N + 1),
                 "n: not base64url");
    refused_jwks(fmt("{\"keys\":[{\"kty\":\"RSA\",\"n\":\"%s\",\"e\":\"\"}]}", RSA_A_N),
                 "e: not base64url of 1 to 32 bytes");
    refused_jwks(fmt("{\"keys\":[{\"kty\":\"RSA\",\"n\":\"%s\",\"e\":\"AQF\"}]}", RSA_A_N),
                 "e: not base64url"); /* non-canonical trailing bits */
    refused_jwks(fmt("{\"keys\":[{\"kty\":\"RSA\",\"n\":\"%s\",\"e\":\"%044d\"}]}", RSA_A_N, 1),
                 "e: not base64url of 1 to 32 bytes"); /* 33 bytes */
    refused_jwks(fmt("{\"keys\":[{\"kty\":\"RSA\",\"n\":\"%s\",\"e\":\"AQ\"}]}", RSA_A_N),
                 "not an RSA public key: n and e must be odd"); /* e = 1 */
    refused_jwks(fmt("{\"keys\":[{\"kty\":\"RSA\",\"n\":\"%s\",\"e\":\"AQAA\"}]}", RSA_A_N),
                 "not an RSA public key: n and e must be odd"); /* e even */
    {
        /* An even modulus. */
        char n[sizeof(RSA_A_N)];
        memcpy(n, RSA_A_N, sizeof(n));
        n[sizeof(n) - 2] = 'A'; /* the last character's 6 bits: ends ...0000 */
        refused_jwks(fmt("{\"keys\":[{\"kty\":\"RSA\",\"n\":\"%s\",\"e\":\"AQAB\"}]}", n),
                     "not an RSA public key: n and e must be odd");
    }
    /* EC values. */
    refused_jwks(fmt("{\"keys\":[{\"kty\":\"EC\",\"x\":\"%s\",\"y\":\"%s\"}]}", EC_C_X, EC_C_Y),
                 "keys[0]: no crv");
    refused_jwks(fmt("{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"y\":\"%s\"}]}", EC_C_Y),
                 "keys[0]: no x");
    refused_jwks(fmt("{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"%s\"}]}", EC_C_X),
                 "keys[0]: no y");
    refused_jwks(fmt("{\"keys\":[%s]}", ec_jwk("e", EC_C_X + 2, EC_C_Y)),
                 "x and y must be 32 bytes"); /* 30 bytes and some bits */
    refused_jwks(fmt("{\"keys\":[%s]}", ec_jwk("e", fmt("AA%s", EC_C_X), EC_C_Y)),
                 "x and y must be 32 bytes");
    refused_jwks(fmt("{\"keys\":[%s]}", ec_jwk("e", EC_C_X, fmt("%sA", EC_C_Y))),
                 "x and y must be 32 bytes");
    {
        char y[sizeof(EC_C_Y)];
        memcpy(y, EC_C_Y, sizeof(y));
        y[5] = y[5] == 'A' ? 'B' : 'A';
        refused_jwks(fmt("{\"keys\":[%s]}", ec_jwk("e", EC_C_X, y)),
                     "(x, y) is not a point of the P-256 curve");
        refused_jwks(fmt("{\"keys\":[%s]}", ec_jwk("e", EC_C_X, EC_D_Y)),
                     "(x, y) is not a point of the P-256 curve");
    }
    /* Private key material, in any key, refuses the whole file. */
    static const char *const priv[] = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"};
    for (size_t i = 0; i < sizeof(priv) / sizeof(priv[0]); i++) {
        refused_jwks(fmt("{\"keys\":[%s,{\"kty\":\"RSA\",\"kid\":\"x\",\"n\":\"%s\",\"e\":\"AQAB\","
                         "\"%s\":\"AQAB\"}]}",
                         a, RSA_B_N, priv[i]),
                     "keys[1] (kid \"x\"): ");
        refused_jwks(fmt("{\"keys\":[{\"kty\":\"RSA\",\"%s\":\"AQAB\"}]}", priv[i]),
                     "private key material: a JWKS file must hold public keys only");
    }
    refused_jwks(fmt("{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"%s\",\"y\":\"%s\","
                     "\"d\":\"%s\"}]}",
                     EC_C_X, EC_C_Y, EC_C_X),
                 "d: private key material");
    refused_jwks("{\"keys\":[{\"kty\":\"oct\",\"k\":\"c2VjcmV0\"}]}", "k: private key material");
    refused_jwks(fmt("{\"keys\":[%s,{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"AA\",\"d\":"
                     "\"AA\"}]}",
                     a),
                 "d: private key material");
    refused_jwks("{\"keys\":[{\"kty\":\"RSA\",\"\\u0064\":\"AQAB\"}]}", "d: private key");
    /* Duplicate kid among the keys used. */
    refused_jwks(fmt("{\"keys\":[%s,%s]}", a, rsa_jwk("rsa-a", RSA_B_N)),
                 "keys[1] (kid \"rsa-a\"): duplicate kid");
    refused_jwks(fmt("{\"keys\":[%s,%s]}", a, ec_jwk("rsa-a", EC_C_X, EC_C_Y)),
                 "keys[1] (kid \"rsa-a\"): duplicate kid");
    /* No usable key. */
    refused_jwks("{\"keys\":[{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"AA\"}]}",
                 "no usable key (1 skipped)");
    /* Too many keys: 65. */
    {
        char *big = malloc(65 * 200 + 64);
        assert_non_null(big);
        strcpy(big, "{\"keys\":[");
        for (int i = 0; i < 65; i++)
            sprintf(big + strlen(big), "%s{\"kty\":\"OKP\",\"kid\":\"k%d\",\"x\":\"AA\"}",
                    i ? "," : "", i);
        strcat(big, "]}");
        refused_jwks(big, "more than 64 keys");
        free(big);
    }
    /* Over 1 MiB. */
    {
        size_t n = AUTH_JWKS_MAX_BYTES + 1;
        char *big = malloc(n + 1), err[256];
        assert_non_null(big);
        memset(big, ' ', n);
        memcpy(big, "{\"keys\":[]}", 11);
        big[n] = '\0';
        auth_keys_t *k = auth_keys_new(NULL, 0);
        assert_false(auth_keys_add_jwks(k, (const uint8_t *)big, n, NULL, NULL, err, sizeof(err)));
        assert_non_null(strstr(err, "larger than"));
        auth_keys_free(k);
        free(big);
    }
}

static void test_jwks_skipped(void **state)
{
    (void)state;
    notes_t ns = {0};
    char err[512];
    const char *doc = fmt(
        "{\"keys\":["
        "{\"kty\":\"OKP\",\"kid\":\"ed\",\"crv\":\"Ed25519\",\"x\":\"AA\"},"                /* 0 */
        "{\"kty\":\"oct\",\"kid\":\"sym\"},"                                                /* 1 */
        "{\"kty\":\"EC\",\"kid\":\"p384\",\"crv\":\"P-384\",\"x\":\"AA\",\"y\":\"AA\"},"    /* 2 */
        "{\"kty\":\"RSA\",\"kid\":\"small\",\"n\":\"%s\",\"e\":\"AQAB\"},"                  /* 3 */
        "{\"kty\":\"RSA\",\"kid\":\"rsa-a\",\"use\":\"enc\",\"n\":\"%s\",\"e\":\"AQAB\"},"  /* 4 */
        "{\"kty\":\"RSA\",\"kid\":\"r384\",\"alg\":\"RS384\",\"n\":\"%s\",\"e\":\"AQAB\"}," /* 5 */
        "{\"kty\":\"EC\",\"kid\":\"e384\",\"alg\":\"ES384\",\"crv\":\"P-256\",\"x\":\"%s\","
        "\"y\":\"%s\"}," /* 6 */
        "{\"kty\":\"RSA\",\"kid\":\"ops\",\"key_ops\":[\"encrypt\"],\"n\":\"%s\",\"e\":\"AQAB\"},"
        "{\"kty\":\"EC\",\"kid\":\"ec-alg-rs\",\"alg\":\"RS256\",\"crv\":\"P-256\",\"x\":\"%s\","
        "\"y\":\"%s\"}," /* 8 */
        "%s,"            /* 9: rsa-a, used (the skipped key 4 had its kid) */
        "{\"kty\":\"RSA\",\"kid\":\"rsa-b\",\"key_ops\":[\"sign\",\"verify\"],\"n\":\"%s\","
        "\"e\":\"AQAB\",\"x5t\":\"whatever\",\"x5c\":[\"MII\"]}," /* 10 */
        "{\"kty\":\"EC\",\"crv\":\"P-256\",\"use\":\"sig\",\"alg\":\"ES256\",\"x\":\"%s\","
        "\"y\":\"%s\"}" /* 11: no kid */
        "],\"other\":{\"x\":[1]}}",
        RSA_1024_N, RSA_A_N, RSA_A_N, EC_C_X, EC_C_Y, RSA_B_N, EC_D_X, EC_D_Y,
        rsa_jwk("rsa-a", RSA_A_N), RSA_B_N, EC_C_X, EC_C_Y);
    auth_keys_t *k = keys_of(NULL, doc, &ns, err, sizeof(err));
    if (!k)
        fail_msg("refused: %s", err);
    assert_int_equal(auth_keys_count(k), 3);
    assert_int_equal(ns.n, 9);
    assert_string_equal(ns.last, "keys[8] (kid \"ec-alg-rs\") skipped: alg is not ES256");
    accepted(k, T_RS_A);
    accepted(k, T_RS_B);
    refused(k, T_ES_C, "unknown kid"); /* the EC key 11 has none */
    refused(k, T_RS_NOKID, "no kid");
    char d[1024];
    auth_keys_describe(k, d, sizeof(d));
    assert_string_equal(d, "3 JWKS keys: kid \"rsa-a\" RSA 2048 bits, kid \"rsa-b\" RSA 2048 "
                           "bits, no kid EC P-256");
    auth_keys_algs(k, d, sizeof(d));
    assert_string_equal(d, "RS256, ES256");
    auth_keys_free(k);

    /* Each reason, one by one. */
    static const struct {
        const char *jwk, *note;
    } one[] = {
        {"{\"kty\":\"OKP\",\"kid\":\"ed\",\"crv\":\"Ed25519\",\"x\":\"AA\"}",
         "keys[1] (kid \"ed\") skipped: kty \"OKP\" (only RSA and EC keys are used)"},
        {"{\"kty\":\"oct\\n\"}", "keys[1] skipped: kty \"(...)\""},
        {"{\"kty\":\"EC\",\"crv\":\"P-521\",\"x\":\"AA\",\"y\":\"AA\"}",
         "keys[1] skipped: a curve other than P-256"},
        {"{\"kty\":\"EC\",\"crv\":\"P-256\",\"use\":\"enc\",\"x\":\"AA\",\"y\":\"AA\"}",
         "keys[1] skipped: use is not \"sig\""},
    };
    for (size_t i = 0; i < sizeof(one) / sizeof(one[0]); i++) {
        memset(&ns, 0, sizeof(ns));
        k = keys_of(NULL, fmt("{\"keys\":[%s,%s]}", rsa_jwk("rsa-a", RSA_A_N), one[i].jwk), &ns,
                    err, sizeof(err));
        if (!k)
            fail_msg("refused: %s", err);
        assert_int_equal(ns.n, 1);
        if (!strstr(ns.last, one[i].note))
            fail_msg("note \"%s\", expected \"%s\"", ns.last, one[i].note);
        auth_keys_free(k);
    }
    memset(&ns, 0, sizeof(ns));
    k = keys_of(NULL,
                fmt("{\"keys\":[%s,{\"kty\":\"RSA\",\"n\":\"%s\",\"e\":\"AQAB\"}]}",
                    rsa_jwk("rsa-a", RSA_A_N), RSA_1024_N),
                &ns, err, sizeof(err));
    assert_non_null(k);
    assert_string_equal(ns.last,
                        "keys[1] skipped: RSA keys of 2048 to 8192 bits only (this one: 1024)");
    auth_keys_free(k);
    memset(&ns, 0, sizeof(ns));
    k = keys_of(NULL,
                fmt("{\"keys\":[%s,{\"kty\":\"RSA\",\"kid\":\"e3\",\"n\":\"%s\",\"e\":\"Aw\"}]}",
                    rsa_jwk("rsa-a", RSA_A_N), RSA_B_N),
                &ns, err, sizeof(err));
    assert_non_null(k);
    assert_string_equal(ns.last,
                        "keys[1] (kid \"e3\") skipped: an RSA public exponent below 65537");
    auth_keys_free(k);
}

static void test_describe(void **state)
{
    (void)state;
    char d[1024];
    auth_keys_t *k = must_load(KEY, all_jwks());
    auth_keys_describe(k, d, sizeof(d));
    assert_string_equal(d, "HS256 secret; 4 JWKS keys: kid \"rsa-a\" RSA 2048 bits, kid \"rsa-b\" "
                           "RSA 2048 bits, kid \"ec-c\" EC P-256, kid \"ec-d\" EC P-256");
    auth_keys_describe(k, d, 20);
    assert_string_equal(d, "HS256 secret; 4 ...");
    auth_keys_algs(k, d, sizeof(d));
    assert_string_equal(d, "HS256, RS256, ES256");
    auth_keys_free(k);
    k = auth_keys_new((const uint8_t *)KEY, strlen(KEY));
    auth_keys_describe(k, d, sizeof(d));
    assert_string_equal(d, "HS256 secret");
    auth_keys_algs(k, d, sizeof(d));
    assert_string_equal(d, "HS256");
    auth_keys_free(k);
}

/* --- files and reload ------------------------------------------------------------------ */

static char dir[64];

static const char *path_of(const char *name)
{
    return fmt("%s/%s", dir, name);
}

static void write_file(const char *name, const char *text, size_t len)
{
    FILE *f = fopen(path_of(name), "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

static void write_text(const char *name, const char *text)
{
    write_file(name, text, strlen(text));
}

static int setup_dir(void **state)
{
    (void)state;
    strcpy(dir, "/tmp/gale-test-jwks-XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown_dir(void **state)
{
    (void)state;
    static const char *const names[] = {"jwks.json", "secret", "big.json", "empty"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        unlink(path_of(names[i]));
    return rmdir(dir);
}

static void test_load(void **state)
{
    (void)state;
    char err[1024];
    notes_t ns = {0};
    /* A JWKS file and a secret file. */
    write_text("jwks.json", all_jwks());
    write_text("secret", fmt("%s\r\n", KEY));
    auth_keys_t *k = auth_keys_load(NULL, 0, path_of("secret"), path_of("jwks.json"), note, &ns,
                                    err, sizeof(err));
    if (!k)
        fail_msg("%s", err);
    assert_true(auth_keys_has_secret(k));
    assert_int_equal(auth_keys_count(k), 4);
    accepted(k, T_HS_SECRET);
    accepted(k, T_RS_A);
    auth_keys_free(k);
    /* A secret given directly, no JWKS. */
    k = auth_keys_load((const uint8_t *)KEY, strlen(KEY), "", "", note, &ns, err, sizeof(err));
    assert_non_null(k);
    accepted(k, T_HS_SECRET);
    auth_keys_free(k);
    /* Errors name the file. */
    assert_null(
        auth_keys_load(NULL, 0, NULL, path_of("missing.json"), note, &ns, err, sizeof(err)));
    assert_non_null(strstr(err, "JWKS '"));
    assert_non_null(strstr(err, "missing.json': No such file or directory"));
    assert_null(auth_keys_load(NULL, 0, path_of("missing"), NULL, note, &ns, err, sizeof(err)));
    assert_non_null(strstr(err, "secret file '"));
    assert_null(auth_keys_load(NULL, 0, NULL, dir, note, &ns, err, sizeof(err)));
    assert_non_null(strstr(err, "Is a directory"));
    write_text("empty", "\n");
    assert_null(auth_keys_load(NULL, 0, path_of("empty"), NULL, note, &ns, err, sizeof(err)));
    assert_non_null(strstr(err, "the secret must be 1 to 1023 bytes"));
    assert_null(auth_keys_load(NULL, 0, NULL, path_of("empty"), note, &ns, err, sizeof(err)));
    assert_non_null(strstr(err, "not well-formed JSON"));
    assert_null(auth_keys_load(NULL, 0, NULL, NULL, note, &ns, err, sizeof(err)));
    assert_non_null(strstr(err, "no keys"));
    {
        size_t n = AUTH_JWKS_MAX_BYTES + 1;
        char *big = malloc(n);
        assert_non_null(big);
        memset(big, ' ', n);
        memcpy(big, all_jwks(), strlen(all_jwks()));
        write_file("big.json", big, n);
        assert_null(
            auth_keys_load(NULL, 0, NULL, path_of("big.json"), note, &ns, err, sizeof(err)));
        assert_non_null(strstr(err, "too large"));
        write_file("big.json", big, n - 1); /* exactly 1 MiB: fine */
        k = auth_keys_load(NULL, 0, NULL, path_of("big.json"), note, &ns, err, sizeof(err));
        assert_non_null(k);
        auth_keys_free(k);
        free(big);
    }
    /* Skipped keys are noted with the file's name. */
    memset(&ns, 0, sizeof(ns));
    write_text("jwks.json", fmt("{\"keys\":[%s,{\"kty\":\"OKP\"}]}", rsa_jwk("a", RSA_A_N)));
    k = auth_keys_load(NULL, 0, NULL, path_of("jwks.json"), note, &ns, err, sizeof(err));
    assert_non_null(k);
    assert_int_equal(ns.n, 1);
    assert_non_null(strstr(ns.last, "JWKS '"));
    assert_non_null(strstr(ns.last, "jwks.json': keys[1] skipped: kty \"OKP\""));
    auth_keys_free(k);
    /* The HS256-only API still works; an empty secret verifies nothing. */
    const char *why;
    auth_grant_t *g =
        auth_verify((const uint8_t *)KEY, strlen(KEY), T_HS_SECRET, strlen(T_HS_SECRET), NOW, &why);
    assert_non_null(g);
    auth_grant_free(g);
    assert_null(auth_verify((const uint8_t *)"", 0, T_HS_SECRET, strlen(T_HS_SECRET), NOW, &why));
}

static void test_reload(void **state)
{
    (void)state;
    char err[1024];
    const char *why;
    notes_t ns = {0};
    write_text("jwks.json", fmt("{\"keys\":[%s,%s]}", rsa_jwk("rsa-a", RSA_A_N),
                                ec_jwk("ec-c", EC_C_X, EC_C_Y)));
    write_text("secret", KEY);
    auth_keys_t *k = auth_keys_load(NULL, 0, path_of("secret"), path_of("jwks.json"), note, &ns,
                                    err, sizeof(err));
    assert_non_null(k);
    auth_t *a = auth_new_keys(k);
    assert_non_null(a);
    assert_ptr_equal(auth_get_keys(a), k);

    /* A connection holds the grant of T_RS_A; T_ES_C is cached, held by nobody. */
    auth_grant_t *held = auth_lookup(a, T_RS_A, strlen(T_RS_A), NOW, &why);
    assert_non_null(held);
    auth_grant_ref(held);
    assert_non_null(auth_lookup(a, T_ES_C, strlen(T_ES_C), NOW, &why));
    assert_non_null(auth_lookup(a, T_HS_SECRET, strlen(T_HS_SECRET), NOW, &why));

    /* Rotation: rsa-a goes, rsa-b comes; the secret file changes. */
    write_text("jwks.json", fmt("{\"keys\":[%s,%s]}", rsa_jwk("rsa-b", RSA_B_N),
                                ec_jwk("ec-c", EC_C_X, EC_C_Y)));
    write_text("secret", "another-secret-0123456789abcdef\n");
    assert_true(
        auth_reload(a, path_of("secret"), path_of("jwks.json"), note, &ns, err, sizeof(err)));
    assert_int_equal(auth_keys_count(auth_get_keys(a)), 2);
    /* New handshakes: the old key and secret are refused at once, the new key works. */
    assert_null(auth_lookup(a, T_RS_A, strlen(T_RS_A), NOW, &why));
    assert_string_equal(why, "unknown kid: no key of the JWKS has it");
    assert_null(auth_lookup(a, T_HS_SECRET, strlen(T_HS_SECRET), NOW, &why));
    assert_string_equal(why, "bad signature");
    assert_non_null(auth_lookup(a, T_RS_B, strlen(T_RS_B), NOW, &why));
    assert_non_null(auth_lookup(a, T_ES_C, strlen(T_ES_C), NOW, &why));
    /* The connection keeps its grant until it lets go. */
    assert_string_equal(held->user, "alice");
    assert_int_equal(held->nsub, 1);
    assert_int_equal(auth_cache_sweep(a), 1); /* held, retired */
    auth_grant_unref(held);
    assert_int_equal(auth_cache_sweep(a), 0);

    /* A reload that fails keeps the keys (and the cache). */
    auth_grant_t *b = auth_lookup(a, T_RS_B, strlen(T_RS_B), NOW, &why);
    assert_non_null(b);
    auth_grant_ref(b);
    write_text("jwks.json", fmt("{\"keys\":[{\"kty\":\"RSA\",\"n\":\"%s\",\"e\":\"AQAB\","
                                "\"d\":\"AQAB\"}]}",
                                RSA_B_N));
    assert_false(
        auth_reload(a, path_of("secret"), path_of("jwks.json"), note, &ns, err, sizeof(err)));
    assert_non_null(strstr(err, "private key material"));
    assert_ptr_equal(auth_lookup(a, T_RS_B, strlen(T_RS_B), NOW, &why), b);
    unlink(path_of("jwks.json"));
    assert_false(
        auth_reload(a, path_of("secret"), path_of("jwks.json"), note, &ns, err, sizeof(err)));
    assert_non_null(strstr(err, "No such file"));
    write_text("jwks.json", "{\"keys\":[]}");
    assert_false(
        auth_reload(a, path_of("secret"), path_of("jwks.json"), note, &ns, err, sizeof(err)));
    assert_false(auth_reload(a, path_of("missing"), "", note, &ns, err, sizeof(err)));
    assert_int_equal(auth_keys_count(auth_get_keys(a)), 2);
    assert_non_null(auth_lookup(a, T_ES_C, strlen(T_ES_C), NOW, &why));
    auth_grant_unref(b);

    /* No secret file: the current secret stays (as --jwt-secret gave it). */
    auth_keys_t *k2 = auth_keys_new((const uint8_t *)KEY, strlen(KEY));
    assert_non_null(k2);
    auth_set_keys(a, k2);
    assert_int_equal(auth_cache_sweep(a), 0);
    write_text("jwks.json", fmt("{\"keys\":[%s]}", rsa_jwk("rsa-a", RSA_A_N)));
    assert_true(auth_reload(a, "", path_of("jwks.json"), note, &ns, err, sizeof(err)));
    assert_non_null(auth_lookup(a, T_HS_SECRET, strlen(T_HS_SECRET), NOW, &why));
    assert_non_null(auth_lookup(a, T_RS_NOKID, strlen(T_RS_NOKID), NOW, &why));
    /* Freed with grants still held by nobody, and one held: auth_free frees all. */
    held = auth_lookup(a, T_RS_A, strlen(T_RS_A), NOW, &why);
    assert_non_null(held);
    auth_grant_ref(held);
    assert_true(auth_reload(a, "", path_of("jwks.json"), note, &ns, err, sizeof(err)));
    auth_free(a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rs256_es256_valid),
        cmocka_unit_test(test_wrong_key),
        cmocka_unit_test(test_kid_selection),
        cmocka_unit_test(test_missing_kid),
        cmocka_unit_test(test_confusion),
        cmocka_unit_test(test_none_and_other_algs),
        cmocka_unit_test(test_tampered),
        cmocka_unit_test(test_signature_lengths),
        cmocka_unit_test(test_jwks_refused),
        cmocka_unit_test(test_jwks_skipped),
        cmocka_unit_test(test_describe),
        cmocka_unit_test(test_load),
        cmocka_unit_test(test_reload),
    };
    return cmocka_run_group_tests(tests, setup_dir, teardown_dir);
}
